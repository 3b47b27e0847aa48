"""A published human Big Five intercorrelation matrix, with its citation.

Used twice: to sample the synthetic authors' trait z-scores (lib/synthetic.py) and as the
human reference in the trait-intercorrelation analysis (METHOD.md section 6), where the
paper's own matrix had neuroticism keyed the wrong way round.

Source: van der Linden, te Nijenhuis & Bakker (2010), a psychometric meta-analysis of Big
Five intercorrelations (K = 212 samples, N = 144,117), Table 2. We use the corrected
(true-score, disattenuated) correlations rho as the reference and also keep the observed
mean correlations r.

Where the numbers come from, honestly: the primary PDF's table text was not reachable
from this environment (only its abstract and first page were, which confirm authors,
title, journal, volume, pages, K and N). The rho values below were checked against two
independent transcriptions of Table 2 that agree digit for digit: a research note and a
derivation script of one open-source persona sampler (which also give the observed r and
state the neuroticism sign convention), and the calibration table of an unrelated
open-source personality model. The observed r has only the first of these two
transcriptions. Check both against the paper before publishing numbers that depend on them.

Sign convention: neuroticism, not emotional stability. The paper's text frames the
Stability meta-factor with emotional stability (the reverse of neuroticism); both
transcriptions give the matrix in the neuroticism direction (N negative with O, C, E, A)
and one says so explicitly. If Table 2 itself prints emotional stability, these are its
values with the N row and column sign-flipped; we could not see the table to tell which.
The magnitudes do not depend on it. ``check_reference_matrix`` enforces the signs so a
keying error like the paper's cannot slip back in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from big5_dagster.lib.traits import TRAITS


@dataclass(frozen=True)
class ReferenceSource:
    """Where a reference matrix comes from: enough to cite it and find the table."""

    authors: str
    year: int
    title: str
    journal: str
    volume: int
    issue: int
    pages: str
    doi: str
    k_samples: int
    n_participants: int
    table: str
    statistic: str
    sign_convention: str

    @property
    def citation(self) -> str:
        return (
            f"{self.authors} ({self.year}). {self.title}. {self.journal}, "
            f"{self.volume}({self.issue}), {self.pages}. https://doi.org/{self.doi}"
        )


_VAN_DER_LINDEN_2010 = {
    "authors": "van der Linden, D., te Nijenhuis, J., & Bakker, A. B.",
    "year": 2010,
    "title": (
        "The General Factor of Personality: A meta-analysis of Big Five intercorrelations "
        "and a criterion-related validity study"
    ),
    "journal": "Journal of Research in Personality",
    "volume": 44,
    "issue": 3,
    "pages": "315-327",
    "doi": "10.1016/j.jrp.2010.03.003",
    "k_samples": 212,
    "n_participants": 144_117,
    "table": "Table 2 (meta-analytic intercorrelations among the Big Five)",
    "sign_convention": "neuroticism (N correlates negatively with O, C, E, A)",
}

HUMAN_TRAIT_CORRELATIONS_SOURCE = ReferenceSource(
    **_VAN_DER_LINDEN_2010,
    statistic="corrected correlation rho (disattenuated for unreliability)",
)
HUMAN_TRAIT_CORRELATIONS_OBSERVED_SOURCE = ReferenceSource(
    **_VAN_DER_LINDEN_2010,
    statistic="observed mean correlation r (not corrected)",
)

# Rows and columns in TRAITS order: openness, conscientiousness, extraversion,
# agreeableness, neuroticism.
HUMAN_TRAIT_CORRELATIONS: np.ndarray = np.array(
    [
        [1.00, 0.20, 0.43, 0.21, -0.17],
        [0.20, 1.00, 0.29, 0.43, -0.43],
        [0.43, 0.29, 1.00, 0.26, -0.36],
        [0.21, 0.43, 0.26, 1.00, -0.36],
        [-0.17, -0.43, -0.36, -0.36, 1.00],
    ]
)
HUMAN_TRAIT_CORRELATIONS_OBSERVED: np.ndarray = np.array(
    [
        [1.00, 0.14, 0.31, 0.14, -0.12],
        [0.14, 1.00, 0.21, 0.31, -0.32],
        [0.31, 0.21, 1.00, 0.18, -0.26],
        [0.14, 0.31, 0.18, 1.00, -0.26],
        [-0.12, -0.32, -0.26, -0.26, 1.00],
    ]
)
# Module-level arrays are shared by every caller: make accidental in-place edits fail.
HUMAN_TRAIT_CORRELATIONS.flags.writeable = False
HUMAN_TRAIT_CORRELATIONS_OBSERVED.flags.writeable = False


def check_reference_matrix(matrix: np.ndarray) -> None:
    """Raise ValueError unless ``matrix`` is a valid Big Five correlation matrix in TRAITS order.

    Valid: 5x5, symmetric, unit diagonal, positive definite (so it can drive a
    multivariate normal), and neuroticism negative with conscientiousness, agreeableness
    and extraversion, as in every large human sample.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(TRAITS), len(TRAITS)):
        raise ValueError(f"expected a {len(TRAITS)}x{len(TRAITS)} matrix, got shape {m.shape}")
    if not np.allclose(m, m.T):
        raise ValueError("correlation matrix is not symmetric")
    if not np.allclose(np.diag(m), 1.0):
        raise ValueError("correlation matrix must have a unit diagonal")
    if np.linalg.eigvalsh(m).min() <= 0:
        raise ValueError("correlation matrix is not positive definite")
    n = TRAITS.index("neuroticism")
    for other in ("conscientiousness", "agreeableness", "extraversion"):
        if m[n, TRAITS.index(other)] >= 0:
            raise ValueError(
                f"neuroticism must correlate negatively with {other} "
                f"(got {m[n, TRAITS.index(other)]:+.2f}): is emotional stability keyed as neuroticism?"
            )


def human_trait_correlations(observed: bool = False) -> pd.DataFrame:
    """The reference matrix as a labelled DataFrame (a fresh copy), rows/columns in TRAITS order."""
    values = HUMAN_TRAIT_CORRELATIONS_OBSERVED if observed else HUMAN_TRAIT_CORRELATIONS
    return pd.DataFrame(np.array(values), index=list(TRAITS), columns=list(TRAITS))


check_reference_matrix(HUMAN_TRAIT_CORRELATIONS)
check_reference_matrix(HUMAN_TRAIT_CORRELATIONS_OBSERVED)
