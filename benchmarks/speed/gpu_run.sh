#!/usr/bin/env bash
# Every device check in one run, for a session that is lent a GPU (docs/results.md, "On a GPU"):
#   smoke     the GPU smoke test (benchmarks/speed/gpu_smoke.py)
#   rollout   the rollout benchmark on CUDA (tiny model) and on an SD3-proportioned one (rollout_cuda_sd3m.json)
#   speed     the algorithm speed table on CUDA with the shapes model (launch-bound: calls count)
#   speed_sd3m  the same table on an SD3-proportioned random model (6 layers, width 512, 256 tokens)
# STEPS="smoke speed" picks some (default: all). Results land in $OUT (default benchmarks/results/gpu).
# Packages the GPU image lacks travel as wheels in .whl/ (installed into /tmp/site when present).
set -u
OUT=${OUT:-benchmarks/results/gpu}
STEPS=${STEPS:-smoke rollout speed speed_sd3m}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
want() { [[ " $STEPS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
rc=0
if want smoke; then
  timeout 150 python3 -m benchmarks.speed.gpu_smoke --out "$OUT/gpu_smoke.json" || rc=1
fi
if want rollout; then
  timeout 60 python3 -m benchmarks.speed.rollout --device cuda --repeats 5 --out "$OUT/rollout_cuda.json" || rc=1
  timeout 90 python3 -m benchmarks.speed.rollout --device cuda --repeats 5 --batch 16 --layers 6 --heads 8 \
    --head-dim 64 --out "$OUT/rollout_cuda_sd3m.json" || rc=1
fi
if want speed; then
  timeout 200 python3 -m benchmarks.speed.algorithms --device cuda --rounds "${ROUNDS:-4}" \
    --out "$OUT/algorithm_speed_cuda.json" || rc=1
fi
if want speed_sd3m; then
  python3 -c "from benchmarks.speed.gpu_smoke import SIZES; from flowalign.testing import save_tiny_sd3; \
save_tiny_sd3('/tmp/sd3m', **SIZES['default'])" >/dev/null 2>&1 || rc=1
  timeout 240 python3 -m benchmarks.speed.algorithms --device cuda --rounds "${ROUNDS:-4}" \
    --out "$OUT/algorithm_speed_cuda_sd3m.json" model.path=/tmp/sd3m model.max_sequence_length=32 \
    reward.name=jpeg_compressibility "dense_grpo:algorithm.completion_batch_size=${DENSE_BATCH:-1024}" || rc=1
fi
exit $rc
