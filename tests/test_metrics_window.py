"""models/metrics.py: metrics kept on the device between logs and read in one copy."""
from __future__ import annotations

import math

import pytest
import torch

from bench.host_syncs import SyncCounter
from models.metrics import Window, read

nan = float("nan")


def test_means_leave_out_non_finite_values_and_count_the_finite_ones():
    window = Window()
    window.add({"loss": torch.tensor(1.0), "loss/reach": torch.tensor(nan), "scale": 0.5})
    window.add({"loss": torch.tensor(3.0), "loss/reach": torch.tensor(4.0), "scale": 1.5})
    window.add({"loss": torch.tensor(float("inf")), "loss/reach": torch.tensor(nan), "scale": 1.0})
    means, counts = window.read()
    assert means == {"loss": 2.0, "loss/reach": 4.0, "scale": 1.0}
    assert counts == {"loss": 2, "loss/reach": 1, "scale": 3}
    assert not window and window.read() == ({}, {})  # a read empties it


def test_a_metric_with_no_finite_value_reads_nan_and_names_may_change_between_updates():
    window = Window()
    window.add({"a": torch.tensor(nan), "distill/weight_reach": torch.tensor(0.25)})
    window.add({"a": torch.tensor(2.0), "distill/weight_push": torch.tensor(0.5)})  # a view pruned in between
    window.add({"b": torch.tensor(nan)})
    means, counts = window.read()
    assert means["a"] == 2.0 and counts["a"] == 1
    assert means["distill/weight_reach"] == 0.25 and means["distill/weight_push"] == 0.5
    assert math.isnan(means["b"]) and counts["b"] == 0


def test_one_copy_to_the_host_for_every_update_and_the_extra_values():
    window = Window()
    for i in range(5):
        window.add({"x": torch.full((), float(i), device="meta"), "y": torch.zeros((), device="meta"), "h": 1.0})
    counter = SyncCounter(host_is_device=False)
    with counter:
        means, _ = window.read(extra={"flag": torch.ones((), dtype=torch.long, device="meta")})
    assert counter.total == 1 and counter.counts["to_host"] == 1, dict(counter.ops)
    assert set(means) == {"x", "y", "h", "flag"}  # (the counter answers reads of meta values with zeros)


def test_read_of_one_update_returns_its_values_as_they_are():
    values = read({"a": torch.tensor(float("inf")), "b": torch.tensor(2, dtype=torch.long), "c": 3})
    assert values == {"a": float("inf"), "b": 2.0, "c": 3.0} and all(type(v) is float for v in values.values())


def test_only_scalars_are_metrics():
    with pytest.raises(AssertionError, match="expected a scalar"):
        Window().add({"per_view": torch.zeros(3)})
