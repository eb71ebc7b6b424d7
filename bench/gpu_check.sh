#!/usr/bin/env bash
# The GPU check on a machine without network: unpack the carried EGL loaders (.gl/, root only, where the
# image has none), install the carried wheels (.whl/) into /tmp/site, then run bench/gpu_check.py on CUDA.
# Fetch both folders first, on a machine with network, with bench/fetch_wheels.sh (docs/gpu.md).
# Extra arguments go to gpu_check.py.
#
#   OUT=/some/dir bash bench/gpu_check.sh [--budget_s 500] [--skip compile,graphs]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# Only where the EGL loader is missing, so a machine that has its own keeps it.
if ! ldconfig -p | grep -q 'libEGL.so.1 ' && compgen -G ".gl/*.deb" >/dev/null && [ "$(id -u)" = 0 ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$vendor" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check.sh: installing the wheels in .whl/ failed (re-fetch them: bench/fetch_wheels.sh)"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
"$PY" -c "import metaworld, mujoco, gymnasium, ruamel.yaml" \
    || { echo "gpu_check.sh: metaworld/mujoco/gymnasium/ruamel.yaml missing: carry .whl (bench/fetch_wheels.sh)"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PY" bench/gpu_check.py --device cuda --out "$OUT" "$@"
