#!/usr/bin/env bash
# Fetch, on a machine with network, the wheels the GPU machine lacks (Python 3.12, manylinux x86_64) into
# the git-ignored .whl/, and the EGL/OpenGL loader packages (Debian/Ubuntu amd64) into the git-ignored .gl/.
# Both folders travel with the working tree to a machine without network; bench/gpu_check.sh installs
# them there. Idempotent: an existing file is kept. Versions follow pyproject.toml's pins.
#
#   bench/fetch_wheels.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
pin() { grep -io "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
# The GPU machine has torch, numpy, scipy, imageio, absl-py, etils, cloudpickle, typing-extensions,
# tensorboard, tqdm, matplotlib, pillow and pytest already; these are missing there.
WHEELS=("$(pin metaworld)" "$(pin mujoco)" "$(pin gymnasium)" "$(pin ruamel.yaml)"
        "glfw==2.10.0" "pyopengl==3.1.10" "farama-notifications==0.0.4")
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# EGL through glvnd: the NVIDIA driver brings the vendor library, these debs the loaders MuJoCo opens.
if [ "${SKIP_GL:-0}" != 1 ]; then
    mkdir -p .gl /tmp/amd64-lists/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64-lists)
    apt-get "${o[@]}" update -qq >/dev/null
    (cd .gl && apt-get "${o[@]}" download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
ls -l .whl .gl 2>/dev/null
du -sh .whl .gl 2>/dev/null
