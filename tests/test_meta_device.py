"""Every stage's update with all modules and inputs on the `meta` device: what would break on a GPU breaks here.

A meta tensor has a device that is not the CPU and no data. A tensor left on the CPU (a plain tensor attribute
that `.to(device)` does not move, an index built on the host) fails against it as it would against a CUDA
tensor, and reading a meta value on the host (`.item()`, `bool()`, `.tolist()`, `.cpu()`) raises, so a first
update that runs at all has no host sync in it. Later updates run under `bench.host_syncs.SyncCounter`,
which also counts blocking host-to-device copies (`torch.tensor(list, device=...)`, legal on meta) and ops
whose output size depends on the data, and answers reads with zeros: an update between two logs must count
0, a log 1 (the metrics of all updates since the last log and the divergence check, in one copy).

Covered: the teacher's pretraining update (plain and PCGrad), the plain student, every distill mode (and the
variants that run other code: critic hook, prior / open-loop targets, auto weight with its gradient-share
measurement, shuffled views), the critic warm-up, policy acting, OOD embedding and scoring of a batch, and
every artefact variant's acting policy.

What meta cannot run, and where it is covered instead:
* bf16 autocast (`torch.autocast` has no meta backend; a model's `autocast()` is a no-op on meta):
  tests/test_distill.py checks on the CPU, with native bf16 assumed, that a bf16 teacher's gates and RSSM
  filtering run in float32.
* fused Adam (its Python front end refuses the meta device): on meta `models.optim` takes the step and undoes
  it on the device; the fused path (CPU and CUDA) is checked in tests/test_optim.py.
* a pruning update decides the active views on the host from the relevance EMAs (made-up zeros on meta), so
  it is counted on the CPU here, where every read of a tensor counts.
The int8 dynamic-activation artefact variant does read the device (torchao, see INT8_DYN_HOST): an xfail.

Tiny sizes (`debug` block, windows of 4 steps, imagination horizon 2). Shape legend: n envs, A action size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import methods
from bench.host_syncs import MODES, SOURCES, SyncCounter, build_student, build_teacher, student_batch, \
    student_stage, teacher_stage

META = torch.device("meta")
TINY = ("--batch_length", "4", "--imag_horizon", "2")
A = 4


def tensors_of(agent):
    """Every parameter, buffer and optimizer state tensor of the agent, its distiller and the distiller's
    frozen teachers, by name."""
    out = {}
    modules = {"wm": agent.wm, "behavior": agent.behavior}
    if agent.distiller is not None:
        modules["distiller"] = agent.distiller
        modules.update({f"frozen{i}": net for i, net in enumerate(agent.distiller._frozen())})
    for label, module in modules.items():
        out.update({f"{label}.{k}": v for k, v in module.named_parameters()})
        out.update({f"{label}.{k}": v for k, v in module.named_buffers()})
    opts = {"wm_opt": agent.wm_opt, "distill_opt": agent.distill_opt, "actor_opt": agent.behavior.actor_opt,
            "critic_opt": agent.behavior.critic_opt}
    for label, opt in opts.items():
        for i, state in enumerate(opt.state.values() if opt is not None else ()):
            out.update({f"{label}.{i}.{k}": v for k, v in state.items() if torch.is_tensor(v) and k != "step"})
    return out


def counted(fn) -> SyncCounter:
    counter = SyncCounter(host_is_device=False)
    with counter:
        fn()
    return counter


def test_every_registered_method_is_covered():
    assert {mode for mode, _ in MODES.values()} == set(methods.REGISTRY)


@pytest.mark.parametrize("mode", [None, *MODES], ids=["plain", *MODES])
def test_student_update_is_device_clean_and_sync_free(mode):
    update, log = student_stage(META, mode, *TINY)
    update()  # the first update: lazily made state (Adam moments, caches); any host read raises here
    syncs = counted(update)
    assert syncs.total == 0, f"{mode}: an update between logs syncs: {dict(syncs.ops)}"
    syncs = counted(log)
    assert syncs.total == 1 and syncs.counts["to_host"] == 1, f"{mode}: a log reads: {dict(syncs.ops)}"


@pytest.mark.parametrize("mode", ["comet", "policy"])
def test_every_tensor_of_a_student_is_on_the_device_after_an_update(mode):
    agent, config = build_student(META, mode, *TINY)
    agent.train(student_batch(config), 0)
    elsewhere = {k: v.device.type for k, v in tensors_of(agent).items() if v.device.type != "meta"}
    assert not elsewhere, elsewhere
    assert agent.distiller._ids.device.type == "meta"  # derived from `active`: moved as a buffer, not left behind


@pytest.mark.parametrize("extra", [(), ("--grad_surgery", "pcgrad")], ids=["mixed", "pcgrad"])
def test_teacher_update_is_device_clean_and_sync_free(extra):
    update, log = teacher_stage(META, *TINY, *extra)
    update()
    syncs = counted(update)
    assert syncs.total == 0, dict(syncs.ops)
    syncs = counted(log)
    assert syncs.total == 1 and syncs.counts["to_host"] == 1, dict(syncs.ops)


def test_teacher_parameters_and_optimizer_state_stay_on_the_device():
    trainer = build_teacher(META, *TINY)
    trainer.update()
    states = [v for s in trainer.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]
    tensors = [*trainer.model.parameters(), *trainer.model.buffers(), *states, trainer.first_bad]
    assert states and all(t.device.type == "meta" for t in tensors)


def test_critic_warm_up_reads_the_device_only_at_its_start_and_end():
    from training import critic_warmup

    agent, config = build_student(META, "critic", *TINY, "--critic_warmup", "3")
    batches = type("Source", (), {"sample": lambda self, i: {**student_batch(config, i),
                                                            "task": np.arange(config.batch_size) % len(SOURCES)}})()
    syncs = counted(lambda: critic_warmup.warmup(agent.distiller, agent, batches, log=lambda line: None))
    # `warmed` read once to resume where it stopped, the last update's metrics once for the report.
    assert syncs.total == 2, dict(syncs.ops)


def observations(n: int = 2) -> dict:
    return {"image": np.zeros((n, 64, 64, 3), np.uint8), "state": np.zeros((n, 39), np.float32),
            "is_first": np.array([True] + [False] * (n - 1))}


def test_policy_acting_reads_the_device_once_per_step():
    agent, _ = build_student(META, None, *TINY)
    state = None
    for training in (True, False):
        syncs = SyncCounter(host_is_device=False)
        with syncs:
            action, state = agent.policy(observations(), state, training=training)
        assert syncs.total == 1 and syncs.counts["to_host"] == 1, dict(syncs.ops)  # the actions, to step the envs
        assert action.shape == (2, A) and action.dtype == np.float32
        assert state[0]["deter"].device.type == "meta" and state[1].device.type == "meta"


def test_ood_scoring_of_a_batch_reads_the_device_once():
    from models.world_model import TeacherWorldModel
    from ood import embed
    from ood.detector import Detector

    _, config = build_student(META, None, *TINY)
    torch.manual_seed(0)
    teacher = TeacherWorldModel(config, A).to(META).eval()
    batch = {k: v for k, v in student_batch(config).items() if k in ("image", "state", "action", "is_first")}
    mask = np.ones(batch["action"].shape[:2], bool)
    mask[:, 0] = False
    syncs = SyncCounter(host_is_device=False)
    with syncs:
        values = embed.embed_batch(teacher, batch, mask, [0, 1])  # (B, V, F)
    assert syncs.total == 1 and syncs.counts["to_host"] == 1, dict(syncs.ops)
    assert values.shape == (config.batch_size, 2, teacher.feat_size)
    rng = np.random.default_rng(0)
    detector = Detector.fit([rng.normal(size=(6, 2, teacher.feat_size)) for _ in range(2)])
    scores = detector.score(values)  # on the host, from the one read
    assert scores["min"].shape == (config.batch_size,)


INT8_DYN_HOST = pytest.mark.xfail(strict=True, reason="torchao's int8 dynamic-activation matmul copies to the host "
                                   "and back for layers whose sizes are not multiples of 8 (here the RSSM input, "
                                   "stoch + action); a CPU deployment variant")


@pytest.mark.parametrize("variant", ["fp32", "bf16", "fp16", "int8_wo", pytest.param("int8_dyn", marks=INT8_DYN_HOST)])
def test_artefact_acting_policy_reads_the_device_once_per_step(variant):
    from artefacts import variants
    from artefacts.policy import PolicyAgent

    assert variant in variants.VARIANTS
    agent, _ = build_student(META, None, *TINY)
    module = variants.make(agent, variant)
    policy = PolicyAgent(module, module)
    state = None
    for _ in range(2):
        syncs = SyncCounter(host_is_device=False)
        with syncs:
            action, state = policy.policy(observations(), state)
        assert syncs.total == 1 and syncs.counts["to_host"] == 1, dict(syncs.ops)
        assert action.shape == (2, A) and all(t.device.type == "meta" for t in state)


def test_a_pruning_update_reads_the_device_only_to_decide_the_pruning():
    """On the CPU (every read of a tensor counts there): the pruning decision reads the relevance EMAs and
    re-derives the active views; the updates between prunings read nothing."""
    update, _ = student_stage("cpu", "comet", *TINY, "--prune_every", "2", "--min_active_tasks", "1")
    update()  # distiller update 1
    counter = SyncCounter(host_is_device=True)
    with counter:
        update()  # update 2 prunes
    assert counter.total == 3, dict(counter.ops)  # EMAs; then the active set and the update count, re-read
    counter = SyncCounter(host_is_device=True)
    with counter:
        update()
    assert counter.total == 0, dict(counter.ops)
