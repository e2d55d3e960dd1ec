#!/usr/bin/env bash
# Every device check in one run, for a session that is lent a GPU (see docs/benchmarks.md):
#   the GPU smoke test (benchmarks/speed/gpu_smoke.py), the rollout benchmark and the algorithm
#   speed table on CUDA. Results land in $OUT (default benchmarks/results/gpu).
# Packages the GPU image lacks travel as wheels in .whl/ (installed into /tmp/site when present).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
rc=0
timeout "${SMOKE_S:-150}" python3 -m benchmarks.speed.gpu_smoke --out "$OUT/gpu_smoke.json" || rc=1
timeout "${ROLLOUT_S:-60}" python3 -m benchmarks.speed.rollout --device cuda --repeats 5 --out "$OUT/rollout_cuda.json" || rc=1
timeout "${ALGO_S:-200}" python3 -m benchmarks.speed.algorithms --device cuda --rounds "${ROUNDS:-4}" \
  --out "$OUT/algorithm_speed_cuda.json" || rc=1
exit $rc
