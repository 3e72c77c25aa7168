#!/usr/bin/env bash
# bench/gpu_check.py on the GPU machine, in one command from the repository root (see docs/performance.md):
#   device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Installs the wheels accbench needs there (pydantic, datasets: .whl/, prepared on the CPU machine as
# ../shared/gpu/README.md says), then runs every phase with a time budget inside one overall deadline. The
# JSON document ($OUT/gpu_check.json) is rewritten after every phase, so a time-out still returns figures;
# the phases' log is $OUT/gpu_check.log. The 8B model (~16 GB) lives in $GPU_CHECK_WORK, never under $OUT.
# Extra arguments go to the script (e.g. --phases env,build,ppl or --quant-blocks 4).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=10
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
# phases stop at --deadline; `timeout` is the backstop that still leaves the device call time to return
timeout -k 10 "${GPU_CHECK_TIMEOUT:-570}" python3 bench/gpu_check.py --size 8b --device cuda \
  --work "${GPU_CHECK_WORK:-/tmp/accbench_gpu_check}" --out "$OUT/gpu_check.json" \
  --deadline "${GPU_CHECK_DEADLINE:-520}" "$@" 2> "$OUT/gpu_check.log"
rc=$?
tail -c 6000 "$OUT/gpu_check.log" >&2
exit $rc
