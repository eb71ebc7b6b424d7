"""`cuda_graphs: True`: a whole update captured once in a CUDA graph and replayed, so that its thousands of
kernel launches cost one (torch.cuda.CUDAGraph).

`CapturedUpdate(fn)` wraps an update `fn(inputs) -> outputs` (a dict of device tensors in, a dict out) that is
capturable: no host sync, the same shapes every call, optimizers whose steps keep their counters on the device
(`prepare`), device state changed in place (a captured update replays into the tensors it was captured with:
an attribute rebound to a new tensor would be read stale). After `warmup` eager calls (on a side stream, as
capture requires; optimizer states and cuBLAS/cuDNN workspaces come to exist) the next call captures `fn` on
static copies of its inputs; later calls copy their inputs there and replay. Tensor outputs are copied out after
each replay (a replay overwrites them); other outputs are returned as they were at capture.

`key`: the host-side decisions the update's Python makes (e.g. whether the slow critic is due). Each key gets
its own graph; graphs share one memory pool (every tensor that outlives an update lives outside it: weights,
optimizer states, the inputs; outputs are copied out at once); past `max_graphs` keys, calls run eagerly. A
host value the update reads but the key does not cover would replay stale: `capture_student` refuses
configurations with such values (changing schedules) and keys the rest; `HostCounters` advances, after a
replay, the host counters the update's Python would have advanced.
"""
from __future__ import annotations

import collections
from typing import Callable, Hashable

import torch

from tools import UsageError


class CaptureError(RuntimeError):
    """The update could not be captured (it syncs with the host, or uses an op CUDA graphs cannot hold)."""


def prepare(models, optimizers) -> None:
    """Make `models` and `optimizers` capturable, right before the first capture (after a resume has loaded the
    optimizers' states and groups): autocast without its weight cache (a cast cached while capturing is freed
    when the autocast region ends, under the graph's feet); optimizer steps in `capturable` mode, their step
    counters on the parameters' device (fused Adam keeps them there already)."""
    for model in models:
        for module in model.modules():
            if hasattr(module, "autocast_cache"):
                module.autocast_cache = False
    for opt in optimizers:
        for group in opt.param_groups:
            group["capturable"] = True
        for param, state in opt.state.items():
            if torch.is_tensor(state.get("step")) and state["step"].device != param.device:
                state["step"] = state["step"].to(param.device, torch.float32)


def copy_out(values: dict) -> dict:
    """Tensors copied out of a graph's static outputs (floating ones in one multi-tensor kernel), others as is."""
    floats = [k for k, v in values.items() if torch.is_tensor(v) and v.is_floating_point()]
    out = dict(values)
    out.update(zip(floats, torch._foreach_mul([values[k] for k in floats], 1.0)))
    out.update((k, v.clone()) for k, v in values.items() if torch.is_tensor(v) and k not in floats)
    return out


class CapturedUpdate:
    def __init__(self, fn: Callable[[dict], dict], warmup: int = 3, max_graphs: int = 8,
                 before_capture: Callable[[], None] | None = None):
        self.fn, self.warmup, self.max_graphs = fn, int(warmup), int(max_graphs)
        self.before_capture = before_capture  # e.g. `prepare`, once, before the first capture
        self.graphs: dict = {}  # key -> (CUDAGraph, static inputs, static outputs)
        self.eager_calls: collections.Counter = collections.Counter()
        self.replays, self.ran_python = 0, False
        self.pool = None

    def __call__(self, inputs: dict, key: Hashable = None) -> dict:
        entry = self.graphs.get(key)
        self.ran_python = entry is None
        if entry is None:
            if self.eager_calls[key] < self.warmup or len(self.graphs) >= self.max_graphs:
                self.eager_calls[key] += 1
                return self._side_stream(lambda: self.fn(inputs))
            entry = self.graphs[key] = self._capture(inputs, key)
        graph, static_in, static_out = entry
        for name, value in inputs.items():
            static_in[name].copy_(value, non_blocking=True)
        graph.replay()
        self.replays += 1
        return copy_out(static_out)

    def forget(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the graphs (and warm-up counts) of the keys `keep` rejects, which will not come again: their slots
        go to the keys that will (with `max_graphs` full, every new key would run eagerly)."""
        self.graphs = {k: g for k, g in self.graphs.items() if keep(k)}
        self.eager_calls = collections.Counter({k: n for k, n in self.eager_calls.items() if keep(k)})

    @staticmethod
    def _side_stream(thunk):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = thunk()
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, inputs: dict, key) -> tuple:
        static_in = {name: value.clone() for name, value in inputs.items()}
        if self.pool is None:
            if self.before_capture is not None:
                self.before_capture()
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            # thread_local: CUDA work of other threads (e.g. a batch copied ahead) does not break the capture.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                static_out = self.fn(static_in)
        except RuntimeError as err:
            raise CaptureError(f"cuda_graphs: the update (key {key!r}) could not be captured in a CUDA graph "
                               f"({' '.join(str(err).split())[:300]}); run with --cuda_graphs False") from None
        return graph, static_in, static_out


class HostCounters:
    """Host counters an update's Python advances, and device buffers that mirror them: after an update that ran
    Python, `record(key)` learns how far each counter moved; after a replay (no Python ran), `advance(key)`
    moves them as far again and refreshes the mirrors (a replay refills them with their values at capture)."""

    def __init__(self, counters: list[tuple[object, str]], mirrors: list[tuple[torch.Tensor, object, str]]):
        self.counters, self.mirrors = counters, mirrors
        self.steps: dict = {}
        self.before: list = []

    def start(self) -> None:
        self.before = [getattr(obj, name) for obj, name in self.counters]

    def finish(self, key, replayed: bool) -> None:
        if replayed:
            for (obj, name), value, step in zip(self.counters, self.before, self.steps[key]):
                setattr(obj, name, value + step)
            for buffer, obj, name in self.mirrors:
                buffer.fill_(getattr(obj, name))
        else:
            self.steps[key] = [getattr(obj, name) - value for (obj, name), value in zip(self.counters, self.before)]


def constant_schedule(spec) -> bool:
    """Whether a config schedule keeps one value (a captured update bakes in the value of its capture)."""
    import configs

    fn = configs.schedule(spec)
    return len({float(fn(step)) for step in (0, 1, 10 ** 3, 10 ** 5, 10 ** 7)}) == 1


# distill modes whose update was checked for capture (host state keyed or counted, device state in place)
CAPTURED_MODES = ("comet",)


def student_refusals(agent) -> list[str]:
    """Why `agent`'s update cannot be captured, one clause each (empty: it can)."""
    c, reasons = agent.config, []
    if agent.device.type != "cuda":
        reasons.append(f"needs --device cuda (the student is on {agent.device})")
    if not constant_schedule(c["actor_entropy"]):
        reasons.append(f"--actor_entropy {c['actor_entropy']} changes with the step; give a constant")
    if c["imag_gradient"] == "both" and not constant_schedule(c["imag_gradient_mix"]):
        reasons.append(f"--imag_gradient_mix {c['imag_gradient_mix']} changes with the step; give a constant")
    if agent.distiller is not None:
        mode = c.get("distill_mode")
        if mode not in CAPTURED_MODES:
            reasons.append(f"--distill_mode {mode} is not captured (only {', '.join(CAPTURED_MODES)})")
        weight = str(c.get("distill_weight", "1.0"))
        if weight != "auto" and not constant_schedule(weight):
            reasons.append(f"--distill_weight {weight} changes with the step; give a constant or auto")
        if c.get("shuffle_views"):
            reasons.append("--shuffle_views True permutes the views on the host every batch")
    return reasons


class StudentGraphs:
    """`Agent.train` replayed from CUDA graphs: one per key (slow critic due, gradient share measured, the
    distiller's active views); an update whose pruning decision is due runs eagerly (it reads the device)."""

    def __init__(self, agent, train: Callable[[dict, int], dict]):
        self.agent, self.train_eager = agent, train
        self.step, self.views = 0, None
        d, b = agent.distiller, agent.behavior
        teacher = getattr(d, "teacher", None)
        optimizers = [o for o in (agent.wm_opt, b.actor_opt, b.critic_opt, agent.distill_opt) if o is not None]
        self.captured = CapturedUpdate(lambda inputs: self.train_eager(inputs, self.step), before_capture=lambda:
                                       prepare([m for m in (agent.wm, b, teacher) if m is not None], optimizers))
        counters = [(agent, "updates"), (agent, "_wm_updates"), (b, "n_updates"), (d, "n_updates")]
        mirrors = [(b.updates, b, "n_updates"), (getattr(d, "updates", None), d, "n_updates")]
        self.host = HostCounters([(o, n) for o, n in counters if o is not None and hasattr(o, n)],
                                 [(t, o, n) for t, o, n in mirrors if torch.is_tensor(t) and hasattr(o, n)])

    def key(self) -> tuple:
        a, d = self.agent, self.agent.distiller
        slow = a.behavior.n_updates % int(a.config["slow_critic_update"]) == 0
        every = getattr(a, "share_every", 0)
        measure = d is not None and every > 0 and a._wm_updates % every == 0
        return slow, measure, tuple(getattr(d, "active_ids", ()) or ())

    def prune_due(self) -> bool:
        d = self.agent.distiller
        every = getattr(d, "prune_every", 0) if d is not None else 0
        return bool(every) and (d.n_updates + 1) % every == 0

    def train(self, batch: dict, step: int) -> dict:
        data = self.agent.wm.preprocess(batch)  # host -> device copies stay outside the graph
        if self.prune_due():
            return self.train_eager(data, step)
        key, self.step = self.key(), step
        if key[2] != self.views:  # pruned: the graphs of the earlier active views never replay again
            self.captured.forget(lambda k: k[2] == key[2])
            self.views = key[2]
        self.host.start()
        out = self.captured(data, key)
        self.host.finish(key, replayed=not self.captured.ran_python)
        return out


def capture_student(agent) -> StudentGraphs:
    """`--cuda_graphs True` for a student: its updates replayed from CUDA graphs from here on (UsageError naming
    what cannot be captured)."""
    reasons = student_refusals(agent)
    if reasons:
        raise UsageError("--cuda_graphs True: " + "; ".join(reasons) + " (or run with --cuda_graphs False)")
    agent.graphs = StudentGraphs(agent, agent.train_eager)
    return agent.graphs


def capture_teacher(model, optimizer, device_update: Callable[[dict], dict]) -> CapturedUpdate:
    """`--cuda_graphs True` for pretraining: `device_update(data) -> metrics` (the update's device work on a
    preprocessed batch; the trainer counts its updates on the host) replayed from one CUDA graph."""
    return CapturedUpdate(device_update, before_capture=lambda: prepare([model], [optimizer]))
