"""Training metrics that stay where they were computed until a log reads them.

An update returns its metrics as a flat dict of 0-d tensors (on the model's device) and plain numbers the
host already knows (schedules, counts). Reading a device value into Python makes the host wait for the
device, so the loops collect the updates' metrics in a `Window` and read them once per log interval:
one copy to the host for every value of every update since the last log.
"""
from __future__ import annotations

import math

import torch


class Window:
    """The metrics of the updates since the last `read`.

    `read()` returns, per name, the mean over its finite values (NaN when it had none) and the number of
    finite values; a value that is not finite (a skipped update's loss, a per-task metric of a task absent
    from that batch) is left out of the mean."""

    def __init__(self):
        self._rows: dict[tuple[str, ...], list[torch.Tensor]] = {}  # names -> one stacked (n,) per update
        self._host: dict[str, list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self._rows or self._host)

    def add(self, metrics: dict) -> None:
        """Keep one update's metrics (one stack of its tensors; nothing is read)."""
        names, values = [], []
        for name, value in metrics.items():
            if torch.is_tensor(value):
                assert value.dim() == 0, f"metric {name} has shape {tuple(value.shape)}, expected a scalar"
                names.append(name)
                values.append(value.detach().float())
            else:
                self._host.setdefault(name, []).append(float(value))
        if values:
            self._rows.setdefault(tuple(names), []).append(torch.stack(values))

    def read(self, extra: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, float], dict[str, int]]:
        """(means, finite counts) of everything added since the last read, then empty. One copy to the
        host; `extra` 0-d tensors (e.g. a health flag) travel in the same copy, returned in `means`."""
        parts, layout = [], []
        for names, rows in self._rows.items():
            table = torch.stack(rows)  # (U, n)
            finite = torch.isfinite(table)
            parts += [torch.where(finite, table, 0.0).sum(0), finite.sum(0).float()]
            layout.append(names)
        extra = dict(extra or {})
        if extra:
            parts.append(torch.stack([v.detach().float().reshape(()) for v in extra.values()]))
        flat = torch.cat([p.reshape(-1) for p in parts]).cpu().tolist() if parts else []
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        at = 0
        for names in layout:
            n = len(names)
            for name, total, count in zip(names, flat[at:at + n], flat[at + n:at + 2 * n]):
                sums[name] = sums.get(name, 0.0) + total
                counts[name] = counts.get(name, 0) + int(count)
            at += 2 * n
        for name, values in self._host.items():
            finite = [v for v in values if math.isfinite(v)]
            sums[name], counts[name] = sums.get(name, 0.0) + sum(finite), counts.get(name, 0) + len(finite)
        means = {name: (sums[name] / counts[name] if counts[name] else float("nan")) for name in sums}
        means.update(zip(extra, flat[at:]))
        self._rows, self._host = {}, {}
        return means, counts


def read(metrics: dict) -> dict[str, float]:
    """One update's metrics as floats, as they are (one copy to the host): for tests, benchmarks and one-off
    reports."""
    names = [k for k, v in metrics.items() if torch.is_tensor(v)]
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).cpu().tolist() if names else []
    tensors = dict(zip(names, values))
    return {k: tensors[k] if k in tensors else float(v) for k, v in metrics.items()}
