"""SFT examples and DPO preference pairs from the BIG5-CHAT dataset (METHOD.md section 5).

One adapter covers all 10 personas: the persona is selected by the system instruction,
the user turn is PersonX's line and the target is PersonY's reply. Splits follow the
dataset's scenario-level split; a seeded share of the train scenarios is held out for
validation, so no scenario is in two splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from big5_dagster.lib.dialogues.dataset import dropped_counts, usable
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.prompts import persona_instruction
from big5_dagster.lib.traits import Persona

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def validation_scenarios(train_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the train scenarios for validation, independent of input order."""
    unique = sorted(set(train_ids))
    if not unique or fraction <= 0:
        return set()
    ranked = sorted(unique, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n = max(1, round(len(unique) * fraction)) if len(unique) > 1 else 0
    return set(ranked[:n])


def training_split(dataset: pd.DataFrame, validation_fraction: float, seed: int) -> pd.Series:
    """train / validation / test per row: test from the dataset, validation carved from train."""
    train_ids = dataset.loc[dataset["split"] == "train", "scenario_id"]
    held_out = validation_scenarios(train_ids.tolist(), validation_fraction, seed)
    split = dataset["split"].astype(str).copy()
    split[(dataset["split"] == "train") & dataset["scenario_id"].isin(held_out)] = "validation"
    return split


def persona_messages(persona: Persona, user_line: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": persona_instruction(persona)},
        {"role": "user", "content": user_line},
    ]


def sft_examples(
    dataset: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    validation_fraction: float,
    seed: int,
    classifier_filter: bool = False,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Prompt/completion examples (completion-only loss) and counts of dropped rows by reason.

    prompt: the chat-rendered system persona instruction + PersonX's line + the assistant
    header; completion: the cleaned reply. ``classifier_filter`` also drops the replies the
    trait classifier reads at the opposite level (counted as ``off_target``).
    """
    split = training_split(dataset, validation_fraction, seed)
    keep = usable(dataset, classifier_filter)
    dropped = dropped_counts(dataset, classifier_filter)
    rows = dataset[keep]
    prompts = [
        render_chat(tokenizer, persona_messages(Persona(t, lv), opener))
        for t, lv, opener in zip(rows["trait"], rows["level"], rows["opener"], strict=True)
    ]
    examples = pd.DataFrame(
        {
            "record_id": rows["record_id"].to_numpy(),
            "scenario_id": rows["scenario_id"].to_numpy(),
            "persona": rows["persona"].to_numpy(),
            "trait": rows["trait"].to_numpy(),
            "level": rows["level"].to_numpy(),
            "split": split[keep].to_numpy(),
            "system": [
                persona_instruction(Persona(t, lv))
                for t, lv in zip(rows["trait"], rows["level"], strict=True)
            ],
            "user": rows["opener"].to_numpy(),
            "prompt": prompts,
            "completion": rows["reply"].to_numpy(),
        }
    )
    return examples, dropped


def dpo_pairs(
    dataset: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    validation_fraction: float,
    seed: int,
    classifier_filter: bool = False,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """For each scenario and persona: chosen = its reply, rejected = the opposite level's reply.

    Pairs where either side is flagged (refusal, empty, near-duplicate; with
    ``classifier_filter`` also read at the opposite level) or missing are dropped and
    counted by reason; nothing is dropped silently.
    """
    split = training_split(dataset, validation_fraction, seed)
    by_key = {
        (r.scenario_id, r.trait, r.level): i
        for i, r in zip(dataset.index, dataset.itertuples(), strict=True)
    }
    keep = usable(dataset, classifier_filter)
    records = []
    dropped = {"missing_opposite": 0, "flagged": 0}
    for index, row in zip(dataset.index, dataset.itertuples(), strict=True):
        persona = Persona(row.trait, row.level)
        other = by_key.get((row.scenario_id, row.trait, persona.opposite.level))
        if other is None:
            dropped["missing_opposite"] += 1
            continue
        if not (keep[index] and keep[other]):
            dropped["flagged"] += 1
            continue
        records.append(
            {
                "pair_id": f"{row.scenario_id}/{persona.key}",
                "scenario_id": row.scenario_id,
                "persona": persona.key,
                "trait": row.trait,
                "level": row.level,
                "split": split[index],
                "prompt": render_chat(tokenizer, persona_messages(persona, row.opener)),
                "chosen": row.reply,
                "rejected": dataset.at[other, "reply"],
                "chosen_record_id": row.record_id,
                "rejected_record_id": dataset.at[other, "record_id"],
            }
        )
    dropped["total"] = dropped["missing_opposite"] + dropped["flagged"]
    columns = [
        "pair_id", "scenario_id", "persona", "trait", "level", "split", "prompt",
        "chosen", "rejected", "chosen_record_id", "rejected_record_id",
    ]  # fmt: skip
    return pd.DataFrame(records, columns=columns), dropped


def demonstrations_by_persona(
    dataset: pd.DataFrame, n: int, seed: int, classifier_filter: bool = False
) -> dict[str, list[str]]:
    """``n`` replies of each persona for the demonstrations baseline: a seeded sample of its
    usable train-split replies (as for training), so no test scenario leaks into a prompt."""
    rows = dataset[(dataset["split"] == "train") & usable(dataset, classifier_filter)]
    picked: dict[str, list[str]] = {}
    for persona, group in rows.groupby("persona", sort=True):
        if len(group) < n:
            raise ValueError(
                f"persona {persona!r} has {len(group)} usable train replies, {n} demonstrations needed"
            )
        picked[str(persona)] = group.sample(n=n, random_state=seed)["reply"].tolist()
    return picked


def pair_problems(pairs: pd.DataFrame, dataset: pd.DataFrame) -> dict[str, int]:
    """Counts of invalid preference pairs: chosen equals rejected, the two sides answer
    different prompts (scenario, PersonX line or trait), an empty side, an empty prompt."""
    records = dataset.set_index("record_id")
    chosen = records.loc[pairs.chosen_record_id]
    rejected = records.loc[pairs.rejected_record_id]
    return {
        "chosen_equals_rejected": int(
            (pairs.chosen.str.strip() == pairs.rejected.str.strip()).sum()
        ),
        "different_prompt": int(
            (chosen.scenario_id.to_numpy() != rejected.scenario_id.to_numpy()).sum()
            + (chosen.opener.to_numpy() != rejected.opener.to_numpy()).sum()
            + (chosen.trait.to_numpy() != rejected.trait.to_numpy()).sum()
        ),
        "empty_side": int(
            ((pairs.chosen.str.strip() == "") | (pairs.rejected.str.strip() == "")).sum()
        ),
        "empty_prompt": int((pairs.prompt.str.strip() == "").sum()),
    }
