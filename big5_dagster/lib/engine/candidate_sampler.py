"""The sampler of every decode loop: temperature, top-k, top-p and a seeded draw per row.

A transformers ``LogitsProcessor``, so this module needs transformers and torch: the decode
functions import it when they run (``engine.sampling`` holds the settings and loads without
them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor

if TYPE_CHECKING:
    from big5_dagster.lib.engine.sampling import SamplingParams

DEFAULT_CANDIDATES = 256
"""Tokens CandidateSampler looks at first: the nucleus of a chat model's next-token
distribution at top_p 0.9 is a few tokens; a row needing more falls back to the full sort."""


def nucleus_mask(probs_desc: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of the descending-sorted probabilities top-p keeps, by transformers' rule.

    ``TopPLogitsWarper`` removes a token when the ascending cumulative mass up to and including
    it is <= 1 - top_p, i.e. keeps it when the mass of the tokens more likely than it is
    < top_p. The most likely token is always kept.
    """
    above = probs_desc.cumsum(dim=-1) - probs_desc
    keep = above < top_p
    keep[..., 0] = True
    return keep


def _inverse_cdf(weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative ``weights`` exceed ``target`` (0 <= target <
    total, so the index has weight > 0)."""
    cdf = weights.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, target.to(cdf).unsqueeze(1), right=True)
    return picked.clamp(max=weights.shape[1] - 1).squeeze(1)


class CandidateSampler(LogitsProcessor):
    """Temperature, top-k and top-p, then one seeded draw per row, over the top candidates.

    Exact, without a sort of the whole vocabulary at every step:

    - the ``candidates`` most likely tokens are taken with ``topk`` and their probabilities
      computed under the full-vocabulary softmax (one logsumexp per row);
    - top-p keeps transformers' set (:func:`nucleus_mask`) whenever the candidates hold at
      least top_p of the mass: every later token then has >= top_p above it and is removed.
      A row whose nucleus is wider (a flat distribution) falls back to the full sort, alone;
    - top_p 1 draws by inverse CDF with the candidates first and the rest of the vocabulary
      after them; a draw past the candidates' mass computes that row's tail only;
    - top-k keeps exactly the top_k tokens, and top-p then sees their renormalized mass, as
      in transformers' order (temperature, top-k, top-p).

    Row i draws one uniform number per step from its own ``torch.Generator`` seeded with
    ``seeds[i]``, so its tokens depend on its prompt and seed, not on its batch. Used as a
    LogitsProcessor it returns 0 for the drawn token and -inf elsewhere (run it last, then
    take the argmax); decode loops call :meth:`draw`.
    """

    def __init__(
        self,
        seeds: Iterable[int],
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        self.seeds = [int(s) for s in seeds]
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.candidates = int(candidates)
        self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.fallback_rows = 0
        """Rows (over all steps) whose draw needed more than the candidates."""

    @classmethod
    def for_params(cls, params: SamplingParams, seeds: Iterable[int]) -> CandidateSampler:
        return cls(seeds, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only these rows' streams (a decode loop dropped the others from its batch)."""
        self._generators = [self._generators[i] for i in rows]
        self.seeds = [self.seeds[i] for i in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = self.draw(scores)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None].to(out.device), 0.0)
        return out

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One token id per row, drawn from the filtered distribution of ``scores``."""
        if scores.shape[0] != len(self._generators):
            raise ValueError(f"got {scores.shape[0]} rows of scores for {len(self.seeds)} seeds")
        uniform = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self._generators]
        )
        logits = scores.float().cpu()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        vocab = logits.shape[-1]
        limit_k = 0 < self.top_k < vocab
        k = self.top_k if limit_k else min(self.candidates, vocab)
        values, indices = logits.topk(k, dim=-1)  # descending
        values = values.double()
        if limit_k:  # top-k first: the softmax over the k kept tokens
            lse = values.logsumexp(-1, keepdim=True)
        else:
            lse = logits.logsumexp(-1, keepdim=True).double()
        probs = (values - lse).exp()
        mass = probs.sum(-1)
        if self.top_p < 1.0:
            weights = torch.where(nucleus_mask(probs, self.top_p), probs, 0.0)
            inside = mass >= self.top_p if not limit_k else torch.ones_like(mass, dtype=torch.bool)
            target = uniform * weights.sum(-1)
        else:
            weights = probs
            target = uniform * (mass if limit_k else 1.0)
            inside = target < mass if not limit_k else torch.ones_like(mass, dtype=torch.bool)
        chosen = indices.gather(1, _inverse_cdf(weights, target)[:, None]).squeeze(1)
        if not bool(inside.all()):
            rows = (~inside).nonzero().flatten()
            self.fallback_rows += int(rows.numel())
            if self.top_p < 1.0:
                chosen[rows] = self._full_nucleus(logits[rows], uniform[rows])
            else:
                chosen[rows] = self._tail(
                    logits[rows], lse[rows], indices[rows], uniform[rows], mass[rows]
                )
        return chosen.to(scores.device)

    def _full_nucleus(self, logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        values, indices = logits.sort(dim=-1, descending=True)
        probs = values.double().softmax(dim=-1)
        weights = torch.where(nucleus_mask(probs, self.top_p), probs, 0.0)
        return indices.gather(1, _inverse_cdf(weights, uniform * weights.sum(-1))[:, None]).squeeze(
            1
        )

    @staticmethod
    def _tail(
        logits: torch.Tensor,
        lse: torch.Tensor,
        candidates: torch.Tensor,
        uniform: torch.Tensor,
        mass: torch.Tensor,
    ) -> torch.Tensor:
        """The draw past the candidates: within the other tokens, at the same relative place
        (u - mass) / (1 - mass) of their own cumulative mass."""
        probs = (logits.double() - lse).exp()
        probs.scatter_(1, candidates, 0.0)
        tail = probs.sum(-1)
        share = ((uniform - mass) / (1.0 - mass)).clamp(0.0, 1.0 - 1e-12)
        return _inverse_cdf(probs, share * tail)
