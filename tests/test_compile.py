"""`--compile True`: the RSSM's observe and imagine steps as single graphs (`RSSM.compile_steps`).

* no graph breaks in any form a step is called with (student, teacher with task ids / task blocks / one task,
  sampling or not, with and without resets, with and without gradients), by `torch._dynamo.explain`;
  a break on the CPU is a break on CUDA: dynamo's tracing does not depend on the device;
* one graph per kind of call, none compiled again on later updates (a counting backend, no code generation);
* losses and gradients of the compiled teacher update and the compiled (distilling) student update equal
  eager's within rtol 1e-4 (inductor on the CPU with random ops as eager's, so both draw the same samples).

The inductor tests compile 1-3 graphs each (30-50 s per graph on a 2-core CPU, a few seconds once inductor's
on-disk cache, /tmp/torchinductor_$USER by default, holds them): marked slow. Tiny sizes (`debug` block),
state observations (the convolutions' compilation is the older `compile_model` part, covered on CUDA by
tests/test_device.py).

Shape legend: B batch, T time, K source tasks, V task views, A action size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor

from models.agent import Agent, compile_agent
from models.networks import TaskBlocks
from models.world_model import TeacherWorldModel, compile_model
from tests.test_distill import TASKS, make_batch, make_config

A, B, T, K = 4, 4, 8, 3
# Relative error of every loss, metric and gradient tensor (by its norm): float32 sums in another order (fused
# kernels) differ from eager by a few ulps per op; over T = 8 steps and a backward pass that stays below this.
RTOL, ATOL = 1e-4, 1e-6


def teacher(k: int = K, seed: int = 0, discrete: int = 0):
    config = make_config("--source_tasks", ",".join(TASKS[:k]), "--dyn_discrete", str(discrete))
    torch.manual_seed(seed)
    return TeacherWorldModel(config, A)


def teacher_batch(seed: int = 0) -> dict:
    batch = make_batch(seed)
    batch["task"] = np.arange(B) % K
    return batch


def student(distill: bool, seed: int = 0, grad_share_every: int | None = None) -> Agent:
    from methods import build_method

    config = make_config(*(("--grad_share_every", str(grad_share_every)) if grad_share_every is not None else ()))
    torch.manual_seed(seed)
    agent = Agent(config, None, A, "cpu")
    if distill:
        frozen = teacher(seed=seed + 1).eval()
        agent.attach_distiller(build_method({**config, "prune_every": 0}, frozen, agent.wm.feat_size, verbose=False))
    return agent


# --- no graph breaks ---------------------------------------------------------------------------------------

def step_calls(rssm, grad: bool):
    """(name, fn, args) for every form in which the scans and acting call the steps of `rssm`."""
    m = B * 2
    state = {k: v.requires_grad_(grad) for k, v in rssm.initial(m).items()}
    action, embed = torch.randn(m, A), torch.randn(m, rssm.embed_size)
    first = torch.zeros(m, dtype=torch.bool)
    tasks = [None] if rssm.n_heads == 1 else [torch.arange(m) % K, rssm.scan_task(TaskBlocks([0, 2], B), m, "cpu"),
                                               rssm.scan_task(1, m, "cpu")]
    calls = []
    for task in tasks:
        for sample in (True, False):
            calls.append((f"obs {type(task).__name__} sample={sample}", rssm.obs_step,
                          (state, action, embed, first, task, sample)))
            calls.append((f"obs no reset {type(task).__name__}", rssm.obs_step, (state, action, embed, None, task, sample)))
            calls.append((f"img {type(task).__name__} sample={sample}", rssm.img_step, (state, action, task, sample)))
    return calls


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("kind", ["student", "student_discrete", "teacher", "teacher_discrete"])
def test_steps_trace_as_one_graph_without_breaks(kind, grad):
    torch.manual_seed(0)
    discrete = 4 if kind.endswith("discrete") else 0
    if kind.startswith("teacher"):
        rssm = teacher(discrete=discrete).dynamics
    else:
        rssm = Agent(make_config("--dyn_discrete", str(discrete)), None, A, "cpu").wm.dynamics
    with torch.set_grad_enabled(grad):
        for name, fn, args in step_calls(rssm, grad):
            explained = torch._dynamo.explain(fn)(*args)
            reasons = [str(r.reason)[:300] for r in explained.break_reasons]
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (kind, name, reasons)


# --- one graph per kind of call ------------------------------------------------------------------------------

class GraphCounter:
    """A torch.compile backend that runs the traced graph as it is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_each_kind_of_call_compiles_once():
    """Training scans, teacher views after new TaskBlocks, a single-task view and acting each trace one graph,
    and a second round of the same calls traces none (no recompilation per update or per step)."""
    model = teacher()
    counter = GraphCounter()
    model.dynamics.compile_steps(backend=counter)
    data = model.preprocess(teacher_batch())
    seen = []
    for _ in range(2):
        loss, _, _ = model.loss(data)
        loss.backward()
        with torch.no_grad():
            model.task_features(data, [0, 2])  # a new TaskBlocks per call
            model.task_features(data, [1, 2])  # same shapes, other tasks: the same graph
            model.observe(data, task=1, sample=False)
        seen.append(counter.graphs)
    assert seen == [3, 3], seen  # training (grad), views (no grad, V = 2), one task (V = 1, no sampling)

    agent = student(distill=False)
    counter = GraphCounter()
    agent.wm.dynamics.compile_steps(backend=counter)
    from bench.common import random_student_batch

    batch = random_student_batch(agent.config, agent.wm.obs_shapes)
    obs = {"state": np.zeros((1, 39), np.float32), "is_first": np.array([True])}
    seen, state = [], None
    for step in range(2):
        agent.train(batch, step)
        for _ in range(2):
            _, state = agent.policy(obs, state)
        seen.append(counter.graphs)
    assert seen == [3, 3], seen  # world-model scan, imagination, acting


# --- compiled equals eager -----------------------------------------------------------------------------------

def grads(module: torch.nn.Module) -> dict:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close_dicts(compiled: dict, eager: dict, what: str) -> None:
    """Every tensor within RTOL of eager's, relative to its norm (so a near-zero element of a large gradient
    is held to the gradient's scale, not to its own)."""
    assert compiled.keys() == eager.keys(), (what, sorted(set(compiled) ^ set(eager)))
    for name in eager:
        c, e = compiled[name].double(), eager[name].double()
        error, scale = torch.linalg.vector_norm(c - e).item(), torch.linalg.vector_norm(e).item()
        assert error <= RTOL * scale + ATOL, (what, name, error, scale)


@pytest.mark.slow
@pytest.mark.timeout_hint(240)
def test_compiled_teacher_update_equals_eager():
    data = teacher_batch()
    out = {}
    for compiled in (False, True):
        model = teacher(seed=0)
        if compiled:
            compile_model(model)
        torch.manual_seed(1)
        with inductor.patch(fallback_random=True):
            for _ in range(2):  # the second call runs the compiled graph as cached, not as just traced
                model.zero_grad(set_to_none=True)
                loss, metrics, _ = model.loss(data)
                loss.backward()
        out[compiled] = ({"loss": loss.detach(), **{k: torch.as_tensor(v) for k, v in metrics.items()}}, grads(model))
    assert_close_dicts(out[True][0], out[False][0], "teacher metric")
    assert_close_dicts(out[True][1], out[False][1], "teacher gradient")
    assert len(out[False][1]) > 20  # every parameter the loss reaches was compared


def record_gradients(agent: Agent) -> list[dict]:
    """Wrap the step of every optimizer of `agent` so that each step first records the gradients it applies."""
    record = []
    optimizers = [agent.wm_opt, agent.behavior.actor_opt, agent.behavior.critic_opt, agent.distill_opt]
    for index, opt in enumerate(o for o in optimizers if o is not None):
        def step(*args, opt=opt, index=index, original=opt.step, **kwargs):
            record.append({f"{index}.{i}": p.grad.detach().clone() for group in opt.param_groups
                           for i, p in enumerate(group["params"]) if p.grad is not None})
            return original(*args, **kwargs)
        opt.step = step
    return record


@pytest.mark.slow
@pytest.mark.timeout_hint(300)
@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distilling"])
def test_compiled_student_update_equals_eager(distill, grad_share_every=0):
    """A whole student update (world model [+ comet distillation from a compiled frozen teacher], imagination,
    actor and critic): the same metrics and the same gradients at every optimizer step as eager."""
    from bench.common import random_student_batch

    out = {}
    for compiled in (False, True):
        # The gradient share r is not measured here (grad_share_every 0): with it measured, compiled and eager
        # differ (model grad norm by 0.3%, r by 4%; seen, not yet diagnosed): test_compiled_update_with_grad_share.
        agent = student(distill, seed=0, grad_share_every=grad_share_every)
        if compiled:
            compile_agent(agent)
        batch = random_student_batch(agent.config, agent.wm.obs_shapes)
        record = record_gradients(agent)
        torch.manual_seed(1)
        with inductor.patch(fallback_random=True):
            metrics = [agent.train(batch, step) for step in range(2)]
        out[compiled] = (metrics, record)
    for step, (c, e) in enumerate(zip(out[True][0], out[False][0])):
        assert_close_dicts({k: torch.as_tensor(v) for k, v in c.items()}, {k: torch.as_tensor(v) for k, v in e.items()},
                           f"update {step} metric")
    assert len(out[True][1]) == len(out[False][1]) == 2 * (4 if distill else 3), len(out[False][1])
    for i, (c, e) in enumerate(zip(out[True][1], out[False][1])):
        assert_close_dicts(c, e, f"optimizer step {i} gradient")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="compiled vs eager with the gradient share measured: model grad norm differs "
                                        "by 0.3% and r by 4% (seen, not yet diagnosed); --compile with distillation is "
                                        "not verified until this passes")
def test_compiled_update_with_grad_share():
    test_compiled_student_update_equals_eager(True, grad_share_every=1)


def test_compile_flag_compiles_the_student_and_its_teacher():
    """`--compile True` reaches the student through `training.student.build_agent` (the one place), and
    `compile_agent` compiles a distiller's frozen teacher too; without the flag nothing is compiled."""
    from training.student import build_agent

    for flag in (False, True):
        agent = build_agent(make_config("--compile", str(flag)), "cpu")
        assert (agent.wm.dynamics._compiled is not None) == flag
    agent = student(distill=True)
    compile_agent(agent)
    assert agent.wm.dynamics._compiled is not None and agent.distiller.teacher.dynamics._compiled is not None


@pytest.mark.device
def test_cuda_runs_let_cudnn_choose_its_algorithms(cuda_device):
    import tools

    torch.backends.cudnn.benchmark = False
    assert tools.get_device(str(cuda_device)) == cuda_device and torch.backends.cudnn.benchmark
