"""`distill_weight: auto`: the coefficient the controller settles on, checked where the answer is known in closed
form (two quadratic losses), its bounds, its place in a student update, resume, and its errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods import MethodError
from methods.weight import ShareController, is_auto
from models import grad_share

from tests.test_distill import make_batch
from tests.test_instruments import make_agent


class Quadratics:
    """L_wm = a/2 |theta - p|^2 and L_d = m/2 |theta - q|^2 at a fixed theta: the share of coefficient c is
    r(c) = c * m |theta - q| / (a |theta - p|), so the coefficient giving share s is c* = s a |theta - p| / (m |theta - q|)."""

    def __init__(self, seed: int = 0, a: float = 40.0):
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.nn.Parameter(torch.randn(7, generator=g))
        self.p, self.q, self.a = torch.randn(7, generator=g), torch.randn(7, generator=g), a

    def unit_share(self, m: float = 1.0) -> float:
        theta = self.theta.detach()
        return m * float((theta - self.q).norm()) / (self.a * float((theta - self.p).norm()))

    def measure(self, c: torch.Tensor, m: float = 1.0) -> torch.Tensor:
        """r measured as the student's update measures it (models/grad_share.py)."""
        self.theta.grad = None
        wm = 0.5 * self.a * (self.theta - self.p).pow(2).sum()
        part = c * 0.5 * m * (self.theta - self.q).pow(2).sum()
        part_grads = grad_share.part_gradients(part, [self.theta])
        (wm + part).backward()
        return grad_share.share(part_grads, [self.theta])[grad_share.SHARE]


def test_controller_reaches_the_coefficient_of_the_target_share_on_two_quadratics():
    quad = Quadratics()
    ctrl = ShareController(share=0.25, init=1.0, low=1e-4, high=1e4, ema=0.9)
    expected = 0.25 / quad.unit_share()
    assert abs(math.log(expected)) > 1.0  # the answer is far from the initial coefficient
    for _ in range(5):
        ctrl.update(quad.measure(ctrl.coefficient()))
    assert float(ctrl.coefficient()) == pytest.approx(expected, rel=1e-4)
    assert float(quad.measure(ctrl.coefficient())) == pytest.approx(0.25, rel=1e-4)


def test_controller_settles_at_the_geometric_mean_answer_when_the_share_is_noisy():
    quad = Quadratics(seed=1)
    rng = np.random.default_rng(0)
    ctrl = ShareController(share=0.1, init=1.0, low=1e-4, high=1e4, ema=0.9)
    expected = 0.1 / quad.unit_share()  # the noise factor exp(0.5 eps) has geometric mean 1
    coefs = []
    for _ in range(400):
        ctrl.update(quad.measure(ctrl.coefficient(), m=float(np.exp(0.5 * rng.normal()))))
        coefs.append(float(ctrl.coefficient()))
    tail = np.log(coefs[100:])
    assert abs(tail.mean() - math.log(expected)) < 0.05, (np.exp(tail.mean()), expected)
    assert tail.std() < 0.25  # smoothed: one measurement's noise has std 0.5 in log


def test_controller_stays_inside_its_bounds_and_ignores_broken_measurements():
    quad = Quadratics()
    unit = quad.unit_share()
    high = ShareController(share=1e6, init=1.0, low=1e-3, high=50.0, ema=0.5)
    for _ in range(3):
        high.update(quad.measure(high.coefficient()))
    assert float(high.coefficient()) == pytest.approx(50.0)
    low = ShareController(share=1e-9, init=1.0, low=0.2, high=50.0, ema=0.5)
    low.update(quad.measure(low.coefficient()))
    assert float(low.coefficient()) == pytest.approx(0.2)
    fresh = ShareController(share=0.5, init=2.0, low=1e-3, high=1e3, ema=0.5)
    for broken in (float("nan"), float("inf"), 0.0):
        fresh.update(torch.tensor(broken))
    assert float(fresh.coefficient()) == pytest.approx(2.0) and int(fresh.measured) == 0
    fresh.update(torch.tensor(2.0 * unit))
    assert float(fresh.coefficient()) == pytest.approx(0.5 / unit, rel=1e-5)


def test_auto_weight_holds_the_share_in_a_student_update_and_resumes():
    _, agent = make_agent("--distill_weight", "auto", "--distill_share", "0.05", "--grad_share_every", "1",
                          "--distill_auto_ema", "0.5")
    d = agent.distiller
    assert is_auto("auto") and d.auto is not None
    shares, scales = [], []
    for i in range(30):
        metrics = agent.train_world_model(make_batch(i % 3), i)[2]
        shares.append(float(metrics[grad_share.SHARE]))
        scales.append(metrics["distill/scale"])
    assert scales[0] == pytest.approx(1.0)  # distill_auto_init until the first measurement
    assert abs(math.log(scales[-1])) > 0.5  # the coefficient moved
    assert 0.05 / 2 < float(np.exp(np.mean(np.log(shares[-10:])))) < 0.05 * 2, shares[-10:]
    # The controller's state travels with the distiller's state_dict.
    _, other = make_agent("--distill_weight", "auto", "--distill_share", "0.05", "--grad_share_every", "1")
    other.distiller.load_state_dict(d.state_dict())
    assert float(other.distiller.coefficient()) == pytest.approx(float(d.coefficient()))


@pytest.mark.parametrize("flags,message", [
    (["--grad_share_every", "0"], "grad_share_every"),
    (["--distill_share", "0"], "distill_share > 0"),
    (["--distill_auto_range", "1,0.5"], "low <= distill_auto_init <= high"),
])
def test_auto_weight_without_a_measurement_or_with_bad_bounds_is_a_clear_error(flags, message):
    with pytest.raises(MethodError, match=message):
        make_agent("--distill_weight", "auto", *flags)
