"""VecEnv: n Meta-World envs stepped together, in subprocess workers when n > 1 (in-process when n == 1).

Workers are started with the 'spawn' context: a forked child would inherit the parent's GL/EGL state, which
is not fork-safe. Every wait on a worker is bounded and checks that the worker is alive, so a crashed or
stuck worker raises `EnvWorkerError` naming the task and worker instead of hanging the caller.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback

import numpy as np


class EnvWorkerError(RuntimeError):
    """An env worker failed, died or stopped answering; the message names the task, the worker and the cause."""


def _stack(steps: list[dict]) -> dict:
    """List of n step dicts -> dict of stacked arrays (n, ...)."""
    return {key: np.stack([np.asarray(s[key]) for s in steps]) for key in steps[0]}


def _worker(conn, settings: dict, task: str, seed: int, index: int, parent: int) -> None:
    """Worker loop: build one env, then answer (command, argument) messages until 'close'."""
    from tools import die_with_parent

    die_with_parent(parent)  # even a worker stuck in a step, which never reads the closed pipe
    # Ctrl-C reaches the whole process group; the parent handles it and closes the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import envs

        # The parent already chose a working backend; set it before mujoco is imported here.
        envs.select_gl_backend(settings["mujoco_gl"], probe=False)
        env = envs.make_env(settings, task, seed, index)
        conn.send(("ok", (env.obs_space, env.act_dim)))
    except Exception as err:  # report anything: the parent turns it into EnvWorkerError
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        conn.close()
        return
    try:
        while True:
            try:
                command, argument = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if command == "close":
                break
            try:
                if command == "reset":
                    result = env.reset(seed=argument)
                elif command == "step":
                    result = env.step(argument)
                elif command == "render":
                    result = env.render()
                elif command == "stats":
                    result = dict(env.stats)
                else:
                    raise ValueError(f"unknown command '{command}'")
                conn.send(("ok", result))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        env.close()
        conn.close()


class VecEnv:
    """`n` envs of one task; env i is `envs.make_env(config, task, seed, index=i)` (seeded with seed + i).

    `reset(indices=None)` and `step(actions (n, A))` return dicts of stacked arrays. Envs whose episode ended
    are not reset automatically: the caller resets them with `reset([i])`.
    """

    def __init__(self, config, task: str | None = None, n: int = 1, seed: int = 0,
                 start_timeout: float = 300.0, timeout: float = 120.0):
        import envs

        if int(n) < 1:
            raise ValueError(f"VecEnv needs n >= 1 envs, got {n}")
        self.settings = envs.env_settings(config)
        task = task if task is not None else (config["task"] if isinstance(config, dict) else config.task)
        self.task = envs.canonical_task(task)  # fails fast on an unknown task, before any worker starts
        self.n = int(n)
        self.seed = int(seed)
        self.timeout = float(timeout)
        self._closed = False
        self._envs = []
        self._procs = []
        self._conns = []
        if self.n == 1:
            self._envs = [self._guard(0, lambda: envs.make_env(self.settings, self.task, self.seed, 0))]
            self.obs_space, self.act_dim = self._envs[0].obs_space, self._envs[0].act_dim
            return
        # Choose the GL backend once here, so that workers do not each probe it.
        self.settings["mujoco_gl"] = envs.select_gl_backend(self.settings["mujoco_gl"])
        context = mp.get_context("spawn")
        try:
            for i in range(self.n):
                parent, child = context.Pipe()
                # The workers die with the thread that starts them (PR_SET_PDEATHSIG): create VecEnvs in a thread
                # that lives as long as they are used (the main thread, in every stage).
                proc = context.Process(target=_worker, name=f"env-{self.task}-{i}", daemon=True,
                                       args=(child, self.settings, self.task, self.seed, i, os.getpid()))
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            specs = [self._receive(i, start_timeout) for i in range(self.n)]
        except _WorkerReported as err:
            self.close()
            raise EnvWorkerError(str(err)) from None
        except BaseException:
            self.close()
            raise
        self.obs_space, self.act_dim = specs[0]

    # --- public API --------------------------------------------------------------------------------

    def reset(self, indices=None, seeds=None) -> dict:
        """Reset envs `indices` (default: all); returns stacked step dicts (len(indices), ...) in that order.

        `seeds` (optional, one per index) re-seeds those envs' position generators first.
        """
        indices = self._indices(indices)
        if seeds is not None and len(seeds) != len(indices):
            raise ValueError(f"reset: got {len(seeds)} seeds for {len(indices)} envs")
        seeds = [None] * len(indices) if seeds is None else [int(s) for s in seeds]
        return _stack(self._call("reset", indices, seeds))

    def step(self, actions) -> dict:
        """Step every env with its row of `actions` (n, A); returns stacked step dicts (n, ...)."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.n, self.act_dim):
            raise ValueError(f"VecEnv.step: actions must have shape ({self.n}, {self.act_dim}), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("VecEnv.step: actions contain non-finite values")
        return _stack(self._call("step", list(range(self.n)), list(actions)))

    def render(self, indices=None) -> np.ndarray:
        """Current frames of envs `indices`: uint8 (len(indices), H, W, 3)."""
        indices = self._indices(indices)
        return np.stack(self._call("render", indices, [None] * len(indices)))

    def frame(self, obs: dict, index: int = 0) -> np.ndarray:
        """What env `index` shows now, uint8 (H, W, 3): the observed image when the envs observe pixels, else
        a frame rendered on request (state envs render nothing per step; their videos ask here)."""
        if "image" in obs:
            return np.asarray(obs["image"][index])
        return self.render([index])[0]

    def stats(self) -> list[dict]:
        """Per-env statistics of the current/last episode (return, length, success_any, success_final)."""
        return self._call("stats", list(range(self.n)), [None] * self.n)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (empty when in-process)."""
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop the workers (politely, then by force) and free the envs. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for env in self._envs:
            env.close()
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for conn in self._conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.n

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- internals ---------------------------------------------------------------------------------

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.n))
        indices = [int(i) for i in np.atleast_1d(indices)]
        bad = [i for i in indices if not 0 <= i < self.n]
        if bad:
            raise IndexError(f"VecEnv: env indices {bad} out of range for n={self.n}")
        return indices

    def _guard(self, index: int, fn):
        """Run `fn` for in-process env `index`, turning failures into EnvWorkerError like a worker's."""
        try:
            return fn()
        except Exception as err:
            raise EnvWorkerError(f"env worker {index} of task '{self.task}' failed: {type(err).__name__}: {err}") from err

    def _call(self, command: str, indices: list[int], arguments: list) -> list:
        if self._closed:
            raise EnvWorkerError(f"VecEnv for task '{self.task}' is closed")
        if self._envs:  # in-process
            env = self._envs[0]
            calls = {"reset": lambda a: env.reset(seed=a), "step": env.step, "render": lambda a: env.render(),
                     "stats": lambda a: dict(env.stats)}
            return [self._guard(i, lambda a=a: calls[command](a)) for i, a in zip(indices, arguments)]
        # Send everything first so that the workers run in parallel, then collect in order.
        for i, argument in zip(indices, arguments):
            try:
                self._conns[i].send((command, argument))
            except (OSError, BrokenPipeError):
                self._fail(i, "died" + self._exit_text(i))
        results, errors = [], []
        for i in indices:
            try:
                results.append(self._receive(i, self.timeout))
            except _WorkerReported as err:
                errors.append(str(err))
                results.append(None)
        if errors:
            raise EnvWorkerError(errors[0])
        return results

    def _receive(self, index: int, timeout: float):
        conn, proc = self._conns[index], self._procs[index]
        deadline = time.monotonic() + timeout
        while not conn.poll(0.2):
            if not proc.is_alive():
                self._fail(index, "died" + self._exit_text(index))
            if time.monotonic() > deadline:
                self._fail(index, f"did not answer within {timeout:.0f} s")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            self._fail(index, "died" + self._exit_text(index))
        if status == "error":
            raise _WorkerReported(f"env worker {index} of task '{self.task}' raised {payload.rstrip()}")
        return payload

    def _exit_text(self, index: int) -> str:
        proc = self._procs[index]
        proc.join(0.5)
        code = proc.exitcode
        if code is None:
            return ""
        if code < 0:
            try:
                return f" (killed by signal {signal.Signals(-code).name})"
            except ValueError:
                return f" (killed by signal {-code})"
        return f" (exit code {code})"

    def _fail(self, index: int, what: str):
        """A worker is dead or stuck: the set cannot continue consistently, so close all and raise."""
        message = what if what.startswith("env worker") else f"env worker {index} of task '{self.task}' {what}"
        if self._procs[index].is_alive():  # stuck: it would not answer a polite close either
            self._procs[index].kill()
        self.close()
        raise EnvWorkerError(message)


class _WorkerReported(Exception):
    """A worker answered with an error; it is still alive and in sync."""
