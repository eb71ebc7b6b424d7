"""One Meta-World v3 environment with the COMET observation and step-dict contract (docs/architecture.md).

The env re-randomises the object and goal positions on every reset (not MT1's 50 fixed variations), is
seeded from one integer, renders 64x64 pixels from a moved `corner2` camera, and reports success as a float.
Action repeat and time limit live in `envs/wrappers.py`; this class performs single physics steps.

mujoco and metaworld are imported lazily so that `MUJOCO_GL` can still be chosen from the config.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import warnings
import weakref
from typing import Sequence

import numpy as np

from tools import ACTION_DIM, OBS_MODES, STATE_DIM  # noqa: F401 (re-exported by envs)
from envs.tasks import canonical_task, env_name
GL_BACKENDS = ("egl", "osmesa")

# metaworld raises once its own step counter reaches max_path_length; our TimeLimit decides instead.
_NO_INTERNAL_LIMIT = 2**62

_gl_backend: str | None = None
_live_envs: "weakref.WeakSet[MetaWorldEnv]" = weakref.WeakSet()
_atexit_registered = False


def _close_live_envs() -> None:
    # mujoco's EGL module terminates the display at exit; GL contexts freed after that raise noisy errors.
    for env in list(_live_envs):
        try:
            env.close()
        except Exception:
            pass


# --- headless rendering backend ------------------------------------------------------------------

def headless_gl() -> str:
    """MUJOCO_GL for a first import of mujoco outside an env (metaworld's scripted experts import it): the value
    already set, else egl. mujoco reads it once, at that import, and its own default needs a display. An env
    picks its configured `mujoco_gl` with `select_gl_backend` instead, while mujoco is not imported yet."""
    return os.environ.setdefault("MUJOCO_GL", GL_BACKENDS[0])


def _gl_works(backend: str) -> tuple[bool, str]:
    """Try one offscreen context in a child process: a broken EGL makes `import mujoco` itself fail,
    and a failed import cannot be undone inside this process."""
    code = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"
    env = dict(os.environ, MUJOCO_GL=backend)
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "timed out creating a context"
    reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
    return done.returncode == 0, reason


def select_gl_backend(preferred: str = "egl", probe: bool = True) -> str:
    """Set `MUJOCO_GL` before mujoco is imported: `preferred` if it works, else the other backend.

    Once mujoco is imported the backend is fixed; a different request then only warns.
    Returns the backend in force.
    """
    global _gl_backend
    preferred = str(preferred).lower()
    if preferred not in GL_BACKENDS:
        raise ValueError(f"mujoco_gl must be one of {GL_BACKENDS}, got '{preferred}'")
    if "mujoco" in sys.modules:
        current = os.environ.get("MUJOCO_GL", "")
        if current != preferred and _gl_backend is None:
            warnings.warn(f"mujoco was imported with MUJOCO_GL='{current}'; mujoco_gl '{preferred}' ignored",
                          stacklevel=2)
        _gl_backend = _gl_backend or current
        return _gl_backend
    if _gl_backend is not None:
        return _gl_backend
    if not probe:
        os.environ["MUJOCO_GL"] = _gl_backend = preferred
        return preferred
    reasons = []
    for backend in (preferred,) + tuple(b for b in GL_BACKENDS if b != preferred):
        ok, reason = _gl_works(backend)
        if ok:
            if backend != preferred:
                warnings.warn(f"MUJOCO_GL={preferred} unusable ({reasons[0]}); falling back to {backend}",
                              stacklevel=2)
            os.environ["MUJOCO_GL"] = _gl_backend = backend
            return backend
        reasons.append(f"{backend}: {reason}")
    raise RuntimeError("no headless OpenGL backend works (" + "; ".join(reasons)
                       + "); install libegl1 or libosmesa6 (see install_add.sh)")


# --- the environment -----------------------------------------------------------------------------

class MetaWorldEnv:
    """A single Meta-World v3 task with goal-observable 39-d state, optional pixels and fresh positions per reset.

    `step` performs ONE physics step (metaworld's frame_skip included) and returns a step dict; pass
    `observe=False` to skip building the observation (the action-repeat wrapper renders only the last frame).
    """

    def __init__(self, task: str, *, obs: str, size: Sequence[int], camera: str, camera_pos: Sequence[float] | None,
                 render_fast: bool, mujoco_gl: str, seed: int = 0):
        # No defaults here: configs.yaml's `defaults` block holds them (envs.make_env passes a config's values).
        if obs not in OBS_MODES:
            raise ValueError(f"obs must be one of {OBS_MODES}, got '{obs}'")
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be [height, width] with positive entries, got {list(size)}")
        self.task = canonical_task(task)
        self.name = env_name(task)
        self.obs_mode = obs
        self.size = size  # (H, W)
        self.render_fast = bool(render_fast)
        self._pixels = obs in ("pixel", "both")
        self._state = obs in ("state", "both")
        select_gl_backend(mujoco_gl)
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        _live_envs.add(self)
        self._mujoco = mujoco
        env = ALL_V3_ENVIRONMENTS[self.name]()
        # Goal-observable, freshly drawn positions on every reset, drawn from the env's own seeded generator.
        env._partially_observable = False
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env.max_path_length = _NO_INTERNAL_LIMIT
        # The observation space is cached for the partially observable layout; recompute it.
        env.__dict__.pop("sawyer_observation_space", None)
        self._env = env
        self._camera_id = self._setup_camera(camera, camera_pos)
        self._renderer = None
        self._seed(seed)
        self._needs_reset = True

    # --- spaces --------------------------------------------------------------------------------------

    @property
    def obs_space(self) -> dict:
        """Observation keys -> gymnasium Box (image uint8 (H, W, 3), state float32 (39,))."""
        from gymnasium.spaces import Box

        spaces = {}
        if self._pixels:
            spaces["image"] = Box(0, 255, self.size + (3,), dtype=np.uint8)
        if self._state:
            spaces["state"] = Box(-np.inf, np.inf, (STATE_DIM,), dtype=np.float32)
        return spaces

    @property
    def action_space(self):
        """Box(-1, 1, (4,)): xyz end-effector delta and gripper effort."""
        from gymnasium.spaces import Box

        return Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)

    @property
    def act_dim(self) -> int:
        return ACTION_DIM

    @property
    def task_vector(self) -> np.ndarray:
        """The object/goal positions drawn at the last reset (metaworld's rand_vec), for checks and logs."""
        vec = self._env._last_rand_vec
        return np.array(vec, dtype=np.float64, copy=True) if vec is not None else np.zeros(0)

    # --- episode -----------------------------------------------------------------------------------

    def _seed(self, seed: int) -> None:
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self._env.seed(seed)

    def reset(self, seed: int | None = None) -> dict:
        """Start an episode with new object/goal positions; `seed` re-seeds the position generator first."""
        if seed is not None:
            self._seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _ = self._env.reset()
        self._needs_reset = False
        step = self._observe(state)
        step.update(reward=np.float32(0.0), discount=np.float32(1.0), success=np.float32(0.0),
                    is_first=True, is_last=False, is_terminal=False)
        return step

    def step(self, action, observe: bool = True) -> dict:
        """One physics step with the action clipped to [-1, 1]^4; returns a step dict (no obs when not `observe`)."""
        if self._needs_reset:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{self.name}: action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.name}: action has non-finite values {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, reward, terminated, _, info = self._env.step(action)
        # Meta-World never terminates; a True here would mean the library changed its contract.
        assert not terminated, f"{self.name}: unexpected terminal state"
        step = self._observe(state) if observe else {}
        step.update(reward=np.float32(reward), discount=np.float32(1.0),
                    success=np.float32(float(info.get("success", 0.0)) > 0.0),
                    is_first=False, is_last=False, is_terminal=False)
        return step

    def _observe(self, state: np.ndarray) -> dict:
        out = {}
        if self._pixels:
            out["image"] = self.render()
        if self._state:
            out["state"] = np.asarray(state, dtype=np.float32)  # (39,)
        return out

    # --- rendering ---------------------------------------------------------------------------------

    def _setup_camera(self, camera: str, camera_pos: Sequence[float] | None) -> int:
        mujoco = self._mujoco
        model, data = self._env.model, self._env.data
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"{self.name}: unknown camera '{camera}'; cameras: {names}")
        if camera_pos is not None and len(camera_pos) > 0:
            if len(camera_pos) != 3:
                raise ValueError(f"camera_pos must have 3 entries, got {list(camera_pos)}")
            model.cam_pos[cam_id] = np.asarray(camera_pos, dtype=np.float64)
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        # Image "up" is the camera's +y axis. corner2 is mounted upside down (it looked right only
        # through mujoco-py's bottom-up pixel read-out); turning it 180 degrees about its optical
        # axis gives the upright view at no per-frame cost.
        up = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        if up[2] < 0:
            turned = np.zeros(4)
            mujoco.mju_mulQuat(turned, model.cam_quat[cam_id].copy(), np.array([0.0, 0.0, 0.0, 1.0]))
            model.cam_quat[cam_id] = turned
            mujoco.mj_kinematics(model, data)
            mujoco.mj_camlight(model, data)
        return cam_id

    def camera_up(self) -> np.ndarray:
        """World direction of the image's upward axis (its z component is positive for an upright image)."""
        mujoco = self._mujoco
        mujoco.mj_kinematics(self._env.model, self._env.data)
        mujoco.mj_camlight(self._env.model, self._env.data)
        return self._env.data.cam_xmat[self._camera_id].reshape(3, 3)[:, 1].copy()

    def render(self) -> np.ndarray:
        """Current frame from the configured camera: uint8 (H, W, 3)."""
        if self._renderer is None:
            mujoco = self._mujoco
            height, width = self.size
            model = self._env.model
            # The offscreen buffer must be at least as large as the frame.
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, height)
            self._renderer = mujoco.Renderer(model, height, width)
            global _atexit_registered
            if not _atexit_registered:
                # The first context makes mujoco register its display shutdown; ours, registered later,
                # runs earlier (exit handlers run last-in first-out) and frees the contexts in time.
                atexit.register(_close_live_envs)
                _atexit_registered = True
            if self.render_fast:
                flags = self._renderer.scene.flags
                flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self._env.data, camera=self._camera_id)
        frame = self._renderer.render()  # (H, W, 3) uint8
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        """Free the GL context and the simulator."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"MetaWorldEnv({self.name}, obs={self.obs_mode}, size={self.size})"
