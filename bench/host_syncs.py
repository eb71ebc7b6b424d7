"""Host-device syncs per update, counted for the teacher, the plain student and every distill mode.

    python bench/host_syncs.py                    # counted on the CPU
    python bench/host_syncs.py --device meta      # counted on the meta device (exact, see below)

A sync is anything that makes the host wait for the device: reading a device value into Python
(`.item()`, `bool()`, `float()`, `.tolist()`, `.numpy()`: `aten._local_scalar_dense` or a copy to the host),
a blocking copy from the host to the device (`torch.tensor(list, device=...)`, `.to(device)` without
`non_blocking`), and ops whose output size depends on the data (`nonzero`, `bincount`, boolean-mask indexing,
`unique`, `repeat_interleave` of a tensor), which read a count back. `SyncCounter` counts them with a
`TorchDispatchMode` (and a `TorchFunctionMode` for what never reaches the dispatcher).

* On the meta device the count is exact: a tensor's device says whether it lives on the host. Reads of a
  meta value are answered with zeros so the update runs on; the host then sees made-up values, which is
  fine for counting.
* On the CPU every tensor is a host tensor, so every read counts, except the step counters non-fused Adam
  keeps on the host on every device (read inside `torch.optim`). Blocking host-to-device copies are
  invisible there (they are no copies on a CPU).

For each stage: `update` = the syncs of one update as the training loop runs it between two logs (the
loop's per-update metric bookkeeping included), `log` = those of an update followed by the loop's metric
read at a log. Counted over `--updates` updates after one uncounted warm-up update; per-update means.

Shape legend: B batch, T time, K source tasks, A action size.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import configs  # noqa: E402
from bench.common import emit, machine  # noqa: E402

A = 4
SOURCES = ["metaworld_reach", "metaworld_push"]
DATA_DEPENDENT = {"nonzero", "bincount", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}
KINDS = ("scalar_read", "to_host", "blocking_to_device", "data_dependent")


# --- counting -----------------------------------------------------------------------------------------

def _from_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "/torch/optim/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _fake(t: torch.Tensor):
    return False if t.dtype == torch.bool else (0 if not t.is_floating_point() else 0.0)


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        c = self.counter
        if name == "_local_scalar_dense":
            t = args[0]
            if c.on_device(t) and not (t.device.type == "cpu" and _from_optimizer()):
                c.add("scalar_read", name)
                if t.device.type == "meta":
                    return _fake(t)
        elif name in ("_to_copy", "to", "copy_"):  # `to` itself reaches the dispatcher under inference_mode
            if name == "copy_":
                dst, src = args[0].device, args[1]
            else:
                src = args[0]
                dst = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, (torch.device, str))),
                                                   src.device)
            dst = torch.device(dst)
            if src.device.type != "cpu" and dst.type == "cpu":
                c.add("to_host", name)
                if src.device.type == "meta":
                    if name == "copy_":
                        return args[0].zero_()
                    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
            elif src.device.type == "cpu" and dst.type != "cpu" and not kwargs.get("non_blocking", False) \
                    and src.numel() > 0 and src.dim() > 0:
                c.add("blocking_to_device", name)
        elif name in DATA_DEPENDENT or (name == "repeat_interleave" and func._overloadname == "Tensor") or (
                name == "index" and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])):
            if c.on_device(args[0]):
                c.add("data_dependent", name)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    """What the dispatcher never sees: `.tolist()`/`.numpy()` of a CPU tensor (CPU runs), tensors built
    from Python data straight on the device."""

    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        c = self.counter
        if name in ("tolist", "numpy") and c.host_is_device and args and torch.is_tensor(args[0]):
            c.add("to_host", name)
        elif name in ("tensor", "as_tensor", "new_tensor"):
            data = args[1] if name == "new_tensor" else (args[0] if args else None)
            device = kwargs.get("device")
            if name == "new_tensor" and device is None:
                device = args[0].device
            if device is not None and torch.device(device).type != "cpu" and not torch.is_tensor(data) \
                    and not isinstance(data, np.ndarray):
                c.add("blocking_to_device", name)
        return func(*args, **kwargs)


class SyncCounter:
    """Context manager counting host syncs by kind (`counts`) and by op (`ops`). `host_is_device`: count
    reads of CPU tensors too (a run on the CPU stands for the device)."""

    def __init__(self, host_is_device: bool):
        self.host_is_device = host_is_device
        self.counts = collections.Counter()
        self.ops = collections.Counter()
        self._modes = [_Function(self), _Dispatch(self)]

    def on_device(self, t: torch.Tensor) -> bool:
        return t.device.type != "cpu" or self.host_is_device

    def add(self, kind: str, op: str) -> None:
        self.counts[kind] += 1
        self.ops[f"{kind}:{op}"] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False


# --- the stages -------------------------------------------------------------------------------------------

def student_config(device, *extra: str):
    """Tiny sizes (`debug` block), pixel and state observations (every method can read its inputs)."""
    return configs.load_config(["--configs", "defaults", "metaworld", "debug", "--obs", "both", "--device",
                                str(device), "--source_tasks", ",".join(SOURCES), "--progress", "False", *extra])


def student_batch(config, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b, t = config["batch_size"], config["batch_length"]
    batch = {"image": rng.integers(0, 256, (b, t, *config["size"], 3), dtype=np.uint8),
             "state": rng.normal(size=(b, t, 39)).astype(np.float32),
             "action": rng.uniform(-1, 1, (b, t, A)).astype(np.float32),
             "reward": rng.uniform(0, 1, (b, t)).astype(np.float32), "discount": np.ones((b, t), np.float32),
             "is_first": np.zeros((b, t), bool), "is_terminal": np.zeros((b, t), bool)}
    batch["is_first"][:, 0] = True
    return batch


def teacher_batch(config, step: int) -> dict:
    batch = student_batch(config, step)
    batch["task"] = np.arange(config["batch_size"]) % len(SOURCES)
    return batch


# name -> (distill_mode, extra flags): every method, and the variants of a method that run other code in an
# update (critic_value: the critic hook; comet_*: the other distill targets, the auto weight measuring the
# gradient share in every update, shuffled views).
MODES = {"comet": ("comet", ()), "vid2act": ("vid2act", ("--teacher_encoder_mode", "label_cnn")),
         "reward": ("reward", ()), "policy": ("policy", ()), "critic": ("critic", ()),
         "critic_value": ("critic", ("--critic_value_coef", "1.0")),
         "comet_prior": ("comet", ("--distill_target", "prior")),
         "comet_open_loop": ("comet", ("--distill_target", "open_loop", "--distill_horizon", "2")),
         "comet_auto": ("comet", ("--distill_weight", "auto", "--grad_share_every", "1")),
         "comet_shuffled": ("comet", ("--shuffle_views", "True"))}


def build_student(device, mode: str | None = None, *extra: str, seed: int = 0):
    """A student Agent on `device`, plain (mode None) or distilling with the `MODES[mode]` method from a
    randomly initialised teacher with random behaviour teachers (syncs do not depend on the weights).
    `extra`: more config flags. Returns (agent, config)."""
    from methods import behaviour, build_method
    from models.agent import Agent
    from models.world_model import TeacherWorldModel

    torch.manual_seed(seed)
    if mode is not None:
        extra = ("--use_distill", "True", "--distill_mode", MODES[mode][0], *MODES[mode][1], *extra)
    config = student_config(device, *extra)
    agent = Agent(config, {"image": (*config["size"], 3), "state": (39,)}, A, device)
    if mode is not None:
        teacher = TeacherWorldModel(config, A).to(device)
        nets = behaviour.BehaviourTeachers(actor=behaviour.TeacherActor(39, A, len(SOURCES), 16, 1),
                                           critic=behaviour.TeacherCritic(39, A, len(SOURCES), 16, 1))
        nets.actor.to(device), nets.critic.to(device)
        agent.attach_distiller(build_method(config, teacher, agent.wm.feat_size, nets, verbose=False))
    return agent, config


class _NoLogger:
    def scalar(self, name, value):
        pass


def build_teacher(device, *extra: str):
    """The pretraining loop's update (`TeacherTrainer.update`) on random mixed-task batches: the trainer
    without its data, logdir or logger."""
    from models.world_model import TeacherWorldModel
    from training.teacher import TeacherTrainer, make_optimizer

    config = student_config(device, *extra)
    torch.manual_seed(0)
    trainer = TeacherTrainer.__new__(TeacherTrainer)
    trainer.config, trainer.device, trainer.step = config, torch.device(device), 0
    trainer.first_bad = trainer.graphs = None
    trainer.model = TeacherWorldModel(config, A).to(device)
    trainer.optimizer = make_optimizer(trainer.model, config)
    trainer.generator = torch.Generator().manual_seed(0)
    trainer.batcher = type("RandomBatches", (), {"sample": lambda self, step: teacher_batch(config, step)})()
    trainer.logger = _NoLogger()
    return trainer


def student_stage(device, mode, *extra: str):
    """(update, log) as `training.student.Trainer` runs them: `Agent.train` with its metrics kept in a window;
    at a log the window is read and the divergence check made."""
    from models.metrics import Window

    agent, config = build_student(device, mode, *extra)
    batches = [student_batch(config, i) for i in range(2)]
    window, state = Window(), {"i": 0}

    def update():
        state["i"] += 1
        window.add(agent.train(batches[state["i"] % 2], state["i"]))

    def log():
        health = agent.health()
        means, _ = window.read(extra=health)
        agent.check_finite({k: means[k] for k in health})

    return update, log


def teacher_stage(device, *extra):
    """(update, log) as `training.teacher.TeacherTrainer._loop` runs them (the diagnostics of a log aside)."""
    from models.metrics import Window

    trainer, window = build_teacher(device, *extra), Window()
    return (lambda: window.add(trainer.update())), (lambda: trainer.write_metrics(window))


def count(stage, updates: int, host_is_device: bool) -> dict:
    update, log = stage
    with SyncCounter(host_is_device):  # warm-up, not counted: optimizer states, caches
        update()
        log()
    out = {}
    for label, logs in (("update", False), ("log", True)):
        counter = SyncCounter(host_is_device)
        with counter:
            for _ in range(updates):
                update()
                if logs:
                    log()
        out[label] = counter.total / updates
        out[f"{label}_ops"] = {k: v / updates for k, v in sorted(counter.ops.items())}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(1)
    host = device.type == "cpu"
    stages = {"teacher": lambda: teacher_stage(device),
              "teacher_pcgrad": lambda: teacher_stage(device, "--grad_surgery", "pcgrad"),
              "student_plain": lambda: student_stage(device, None)}
    stages.update({f"student_{m}": (lambda m=m: student_stage(device, m)) for m in MODES})
    result = {"machine": machine(device if device.type == "cuda" else None), "device": str(device),
              "counted": "every read of a tensor (CPU stands for the device)" if host else
              "reads of device tensors and blocking host-to-device copies", "updates": args.updates, "stages": {}}
    for name, make in stages.items():
        try:
            result["stages"][name] = count(make(), args.updates, host)
        except Exception as err:  # a stage that cannot run on this device says why
            result["stages"][name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    return emit(result, args.out)


if __name__ == "__main__":
    main()
