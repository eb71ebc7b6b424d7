#!/usr/bin/env bash
# One-shot, idempotent set-up: system libraries for headless rendering, .venv with pinned packages,
# an editable install of this project, and a one-frame Meta-World render as a self-check.
# A second run only re-checks (a few seconds): packages are reinstalled only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")"

log() { echo "[install] $*"; }

# --- system libraries (EGL for headless MuJoCo, OSMesa as the fallback) ---------------------------
need_libs=()
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_libs+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' || need_libs+=(libgl1)
ldconfig -p 2>/dev/null | grep -q 'libOSMesa.so' || need_libs+=(libosmesa6)
if [ ${#need_libs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    log "installing system libraries: ${need_libs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_libs[@]}" >/dev/null
  else
    log "warning: missing ${need_libs[*]} and no apt-get; install EGL or OSMesa for headless rendering"
  fi
fi

# --- Python environment -------------------------------------------------------------------------
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "[install] error: no python3 found (Python 3.11 recommended)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.comet-requirements
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing pinned packages (torch 2.13.0 CPU build where available)"
  # TORCH_INDEX_URL lets users elsewhere pick a CPU-only torch, e.g. https://download.pytorch.org/whl/cpu
  extra=()
  [ -n "${TORCH_INDEX_URL:-}" ] && extra+=(--extra-index-url "$TORCH_INDEX_URL")
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${extra[@]}" -r requirements.txt
  echo "$want" > "$stamp"
else
  log "packages up to date"
fi

# --- self-check: render one Meta-World frame headless ----------------------------------------------
render_check() {
  MUJOCO_GL=$1 .venv/bin/python - <<'PY'
import os
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
env = ALL_V3_ENVIRONMENTS["reach-v3"](render_mode="rgb_array", camera_name="corner2", width=64, height=64)
env._partially_observable = False
env._freeze_rand_vec = False
env._set_task_called = True
env.reset(seed=0)
frame = env.render()
assert frame.shape == (64, 64, 3) and frame.std() > 0, "rendered frame is blank"
print(f"[install] self-check: rendered a 64x64 Meta-World frame with MUJOCO_GL={os.environ['MUJOCO_GL']}")
PY
}
if ! render_check "${MUJOCO_GL:-egl}" 2>/tmp/comet-render-check.log; then
  log "rendering with ${MUJOCO_GL:-egl} failed ($(tail -n 1 /tmp/comet-render-check.log)); trying osmesa"
  render_check osmesa || { log "error: headless rendering does not work; see /tmp/comet-render-check.log"; exit 1; }
  log "use --mujoco_gl osmesa (or export MUJOCO_GL=osmesa) on this machine"
fi
log "done"
