"""`distill_weight: auto`: a coefficient that holds the distillation term's gradient share near a target.

The share r = c * u is the coefficient c times the share per unit weight u = |grad L_raw| / |grad L_wm|
(models/grad_share.py, measured every `grad_share_every` world-model updates). The controller keeps an EMA of
log u over the measurements and sets log c = clamp(log(distill_share) - EMA(log u), log c_min, log c_max):
a multiplicative update in log space towards r = share, smoothed by the EMA (factor `distill_auto_ema` per
measurement) and bounded by `distill_auto_range`. Until the first measurement c = `distill_auto_init`.

Design decisions:
* u, not r, is averaged: r moves with c itself, so an average of r would mix measurements taken at different
  coefficients; u is what the coefficient has to compensate.
* The average is geometric (an EMA of log u): shares spread over orders of magnitude between batches, and an
  arithmetic mean would be set by the rare large ones.
* Everything stays on the device (buffers, `torch.where`): no host sync per update; a non-finite or zero
  measurement (a skipped update) leaves the state unchanged. The buffers travel in the method's state_dict,
  so a resumed run continues with its coefficient.
"""
from __future__ import annotations

import math

import torch
from torch import nn

AUTO = "auto"


def is_auto(spec) -> bool:
    """Whether a `distill_weight` value asks for the controller."""
    return isinstance(spec, str) and spec.strip().lower() == AUTO


class ShareController(nn.Module):
    """Coefficient c held at gradient share `share`; `coefficient()` (0-d tensor), `update(r)` after a
    measurement of r taken with the current coefficient."""

    def __init__(self, share: float, init: float, low: float, high: float, ema: float):
        super().__init__()
        if not (share > 0 and 0 < low <= init <= high and 0.0 <= ema < 1.0):
            raise ValueError(f"distill_weight auto needs distill_share > 0, 0 < low <= distill_auto_init <= high "
                             f"and distill_auto_ema in [0, 1); got share {share}, init {init}, range [{low}, {high}], "
                             f"ema {ema}")
        self.share, self.ema = float(share), float(ema)
        self.log_low, self.log_high = math.log(low), math.log(high)
        self.register_buffer("log_coef", torch.tensor(math.log(init)))
        self.register_buffer("log_unit", torch.zeros(()))  # EMA of log u
        self.register_buffer("measured", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, c) -> "ShareController":
        low, high = (float(x) for x in c["distill_auto_range"])
        return cls(float(c["distill_share"]), float(c["distill_auto_init"]), low, high, float(c["distill_auto_ema"]))

    def coefficient(self) -> torch.Tensor:
        return self.log_coef.exp()

    @torch.no_grad()
    def update(self, r: torch.Tensor) -> None:
        """Take one measurement of the share r, measured with the current coefficient."""
        unit = r.float() / self.coefficient()
        ok = torch.isfinite(unit) & (unit > 0)
        log_u = torch.where(ok, unit, torch.ones_like(unit)).log()
        first = self.measured == 0
        ema = torch.where(first, log_u, self.ema * self.log_unit + (1 - self.ema) * log_u)
        self.log_unit.copy_(torch.where(ok, ema, self.log_unit))
        target = (math.log(self.share) - self.log_unit).clamp(self.log_low, self.log_high)
        self.measured.add_(ok.long())
        self.log_coef.copy_(torch.where(self.measured > 0, target, self.log_coef))
