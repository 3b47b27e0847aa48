"""The steering sweep: layer x coefficient on a few held-out scenarios, per persona the
target-trait accuracy and the fluency of the steered replies (lib.dialogues.sweep's measures).

A setting is (variant, layer, coef). The unsteered reply (coef 0) is the same for every
persona, since the steered model gets no persona instruction: it is generated once per
scenario, copied under each persona (formula ``"none"``, the reference of the drift). The
grounded variant runs at every layer x coef; the prompted one at the chosen layer only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from big5_dagster.lib.dialogues.cleaning import clean_reply
from big5_dagster.lib.dialogues.sweep import PLAIN
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import GenerationResult, generate_chat
from big5_dagster.lib.engine.loading import LoadedModel
from big5_dagster.lib.engine.sampling import SamplingParams, row_seeds
from big5_dagster.lib.engine.steering import PersonaVectors, generate_steered
from big5_dagster.lib.traits import PERSONAS, Persona

Setting = tuple[str, int, float]
"""(variant, layer, coef)."""


def setting_label(variant: str, layer: int) -> str:
    """The sweep's ``formula`` column: 'grounded@L15' (one curve per variant and layer)."""
    return f"{variant}@L{layer}"


def steering_grid(
    layers: Sequence[int], coefs: Sequence[float], chosen_layer: int
) -> list[Setting]:
    """The grounded variant at every layer x positive coef, then the prompted one at
    ``chosen_layer``; coef 0 (no steering) is the shared plain reply, not a setting."""
    bad = [c for c in coefs if not (np.isfinite(c) and c > 0)]
    if bad or not coefs:
        raise ValueError(f"sweep coefs must be a non-empty list of numbers > 0, got {coefs}")
    if not layers:
        raise ValueError("sweep layers must not be empty")
    grid = [("grounded", int(layer), float(c)) for layer in layers for c in sorted(set(coefs))]
    return grid + [("prompted", int(chosen_layer), float(c)) for c in sorted(set(coefs))]


def _rows(
    scenarios: pd.DataFrame,
    results: Sequence[GenerationResult],
    persona: Persona,
    formula: str,
    coef: float,
    layer: int | None,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "formula": formula,
            "alpha": float(coef),
            "layer": layer,
            "persona": persona.key,
            "trait": persona.trait,
            "level": persona.level,
            "scenario_id": scenarios.scenario_id.to_numpy(),
            "opener": scenarios.opener.to_numpy(),
            "raw_reply": [r.text for r in results],
            "reply": [
                clean_reply(r.text, y) for r, y in zip(results, scenarios.person_y, strict=True)
            ],
            "n_new_tokens": [r.n_new_tokens for r in results],
            "finish_reason": [r.finish_reason for r in results],
        }
    )


def steering_sweep_replies(
    loaded: LoadedModel,
    vectors: PersonaVectors,
    scenarios: pd.DataFrame,
    grid: Sequence[Setting],
    sampling: SamplingParams,
    *,
    batch_size: int = 8,
    personas: Sequence[Persona] = PERSONAS,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every persona's replies to ``scenarios`` (scenario_id, opener, person_y) with no
    instruction, unsteered and at every setting of ``grid``; the same sampling seeds per
    scenario in every setting and persona (common random numbers).

    A setting's personas decode together: the rows are scenario x persona, each with its
    persona's vector (``generate_in_row_order``), ``batch_size`` rows a batch, each row
    seeded as in a call for its persona alone. ``progress(done, total)`` counts
    settings."""
    conversations = [[{"role": "user", "content": o}] for o in scenarios.opener]
    plain = generate_chat(loaded, conversations, sampling, batch_size=batch_size)
    parts = [_rows(scenarios, plain, p, PLAIN, 0.0, None) for p in personas]
    prompts = [render_chat(loaded.tokenizer, c, index=i) for i, c in enumerate(conversations)]
    n = len(prompts)
    rows = [(persona, i) for persona in personas for i in range(n)]
    seeds = row_seeds(sampling.seed, n)
    for done, (variant, layer, coef) in enumerate(grid, start=1):
        vector_of = {
            p.key: vectors.steering_vector(variant, p.trait, p.level, layer, coef) for p in personas
        }
        results = generate_steered(
            loaded,
            [prompts[i] for _, i in rows],
            [vector_of[persona.key] for persona, _ in rows],
            layer,
            sampling,
            seeds=[seeds[i] for _, i in rows],
            batch_size=batch_size,
        )
        for k, persona in enumerate(personas):
            parts.append(
                _rows(
                    scenarios,
                    results[k * n : (k + 1) * n],
                    persona,
                    setting_label(variant, layer),
                    coef,
                    layer,
                )
            )
        if progress is not None:
            progress(done, len(grid))
    return pd.concat(parts, ignore_index=True)


def held_out_scenarios(dataset: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first ``n`` test-split scenarios (by id) of the BIG5-CHAT dataset: no training
    set and no persona vector saw them. One row each: scenario_id, opener, person_y."""
    test = dataset[dataset["split"] == "test"]
    if test.empty:
        raise ValueError("the BIG5-CHAT dataset has no test-split scenario to sweep on")
    first = test.drop_duplicates("scenario_id").sort_values("scenario_id").head(n)
    return first[["scenario_id", "opener", "person_y"]].reset_index(drop=True)


def chosen_setting(
    curve: pd.DataFrame, max_perplexity_ratio: float = 1.5, min_distinct_ratio: float = 0.8
) -> pd.DataFrame:
    """The grounded setting with the highest mean target accuracy (the smaller coef on a
    tie) among those still fluent: median perplexity at most ``max_perplexity_ratio`` times
    the unsteered replies' and distinct-2 at least ``min_distinct_ratio`` times theirs. One
    row of ``curve`` (formula, alpha, ...), or none when no setting is fluent."""
    plain = curve[curve.alpha == 0].iloc[0]
    steered_rows = curve[(curve.alpha > 0) & curve.formula.str.startswith("grounded@")]
    fluent = steered_rows[
        (steered_rows.perplexity_median <= max_perplexity_ratio * plain.perplexity_median)
        & (steered_rows.distinct_2 >= min_distinct_ratio * plain.distinct_2)
    ]
    return fluent.sort_values(["target_accuracy", "alpha"], ascending=[False, True]).head(1)
