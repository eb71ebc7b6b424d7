#!/usr/bin/env bash
# One-shot, idempotent set-up: system libraries for headless rendering, .venv with this project installed
# editable with the pins of pyproject.toml and its test and wandb extras (console commands comet-collect,
# comet-pretrain, comet-distill, comet-ood, comet-quickstart, ...; code edits take effect without reinstalling),
# and a one-frame Meta-World render as a self-check.
# A second run only re-checks (a few seconds): packages are reinstalled only when pyproject.toml changes.
#   PYTHON=python3.12 ./install_add.sh                                       # another interpreter (>= 3.10)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./install_add.sh    # CPU-only torch (no CUDA download)
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
[ -n "$PYTHON" ] || { echo "[install] error: no python3 found; install Python 3.11 (3.10 or newer) or set PYTHON=..."; exit 1; }
# pyproject.toml's requires-python; the pinned packages are tested on 3.11.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "[install] error: $PYTHON is $("$PYTHON" --version 2>&1); COMET needs Python 3.10 or newer (3.11 tested); set PYTHON=python3.11"
  exit 1
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "[install] error: the existing .venv uses $(.venv/bin/python --version 2>&1); remove .venv and run again"
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.comet-requirements
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  extra=()
  torch_pin=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    extra+=(--extra-index-url "$TORCH_INDEX_URL")
    log "installing pinned packages ($torch_pin from $TORCH_INDEX_URL)"
  else
    # PyPI's Linux torch wheel is the CUDA build (several GB of CUDA libraries, runs on a CPU too).
    log "installing pinned packages ($torch_pin as your pip index serves it: on PyPI the CUDA build;"
    log "  for a CPU-only torch run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./install_add.sh)"
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  # The project, editable (the console commands point at this checkout), with every pin of pyproject.toml.
  .venv/bin/python -m pip install -q "${extra[@]}" -e ".[test,wandb]"
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
log "done: .venv/bin/python -m sweeps.quickstart runs the pipeline; the stages are also commands, e.g. .venv/bin/comet-distill --help"
