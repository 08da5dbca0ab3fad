"""Token-weighted NLL and the modality's comparable unit, exact under DDP.

Every rank sums NLL (nats), target tokens and target units (bytes / seconds / notes, from the
DataModule's per-token-id unit table) and, for data that asks for it (the in-context probes), the
targets whose top-1 prediction is right; torchmetrics reduces the sums across ranks at
``compute``, so the result equals a single-process evaluation over the same windows, whatever the
split sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric

from datamodules.modality import unit_metric

LN2 = math.log(2.0)


class NonFiniteMetricError(ValueError):
    """An evaluation batch gave a NaN or infinite NLL: the model has diverged (never scored)."""


class NLLMetrics(nn.Module):
    def __init__(self):
        super().__init__()
        # "error", not torchmetrics' default "warn" that drops NaN: a NaN batch must never lower the NLL
        self.nll = SumMetric(nan_strategy="error")
        self.tokens = SumMetric(nan_strategy="error")
        self.units = SumMetric(nan_strategy="error")
        self.correct = SumMetric(nan_strategy="error")  # top-1 hits, on the targets of batches that report them
        self.judged = SumMetric(nan_strategy="error")  # the targets those hits are out of

    @torch.no_grad()
    def update(
        self, nll_sum: Tensor, targets: Tensor, units_per_token: Tensor | None, correct: Tensor | None = None
    ) -> None:
        """nll_sum: summed nats over the valid targets; targets: (B, T) with -100 = not scored;
        correct: how many of those targets the model ranks first (None: accuracy not reported)."""
        if not torch.isfinite(nll_sum):
            raise NonFiniteMetricError(
                f"evaluation NLL is {float(nll_sum)} on a batch: the model's outputs are not finite (a diverged run, "
                "or a checkpoint saved after divergence); such a model is never scored"
            )
        valid = targets >= 0
        self.nll.update(nll_sum.detach().double())
        self.tokens.update(valid.sum().double())
        if units_per_token is not None:
            u = units_per_token.to(targets.device)[targets.clamp_min(0)]
            self.units.update((u * valid).sum().double())
        if correct is not None:
            self.correct.update(correct.detach().double())
            self.judged.update(valid.sum().double())

    def compute(self, unit: str) -> dict[str, Tensor]:
        nll, n = self.nll.compute(), self.tokens.compute()
        mean = nll / n
        out = {"nll": mean, "bpt": mean / LN2, "ppl": torch.exp(mean)}
        units = self.units.compute() if self.units.update_called else 0  # data without a unit table has none
        if units > 0:
            out[unit_metric(unit)] = nll / LN2 / units
        if self.judged.update_called:  # only data that reports accuracy (computing an unused metric warns)
            out["acc"] = self.correct.compute() / self.judged.compute()
        out["tokens"] = n
        return {k: v.float() for k, v in out.items()}

    def reset(self) -> None:
        for m in (self.nll, self.tokens, self.units, self.correct, self.judged):
            m.reset()
