"""The order DPO trains its preference pairs in (``training.dpo_pair_order``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def mirrored_couples(pairs: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """Preference pairs in training order, each next to its mirror: the same scenario and
    trait at the other level, so the same two replies with chosen and rejected swapped and
    only the persona instruction different. Couples come in a seeded order; at most
    ``cap`` pairs (``cap // 2`` couples; None: all). Pairs without a mirror follow at the
    end in the same seeded order.

    Why: a preference that ignores the instruction (this reply over that one) wins a pair
    and loses its mirror, so in one optimizer step their gradients cancel and what is left
    is the part that reads the persona. Shuffled, the model first learns the replies' content
    and the mirrors then undo it (the training loss rises above ln 2)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for position, key in enumerate(zip(pairs["scenario_id"], pairs["trait"], strict=True)):
        groups.setdefault(key, []).append(position)
    if any(len(g) > 2 for g in groups.values()):
        raise ValueError("DPO pairs: more than one pair per scenario, trait and level")
    levels = pairs["level"].to_numpy()
    # sorted keys first, so the seeded order does not depend on the input order
    couples = [
        sorted(groups[k], key=lambda i: levels[i]) for k in sorted(groups) if len(groups[k]) == 2
    ]
    single = [groups[k][0] for k in sorted(groups) if len(groups[k]) == 1]
    couples = [couples[i] for i in rng.permutation(len(couples))]
    single = [single[i] for i in rng.permutation(len(single))]
    order = [i for couple in couples for i in couple] + single
    if cap is not None:
        order = order[: cap - cap % 2] if couples else order[:cap]
    return pairs.iloc[order].reset_index(drop=True)
