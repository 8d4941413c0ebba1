#!/usr/bin/env bash
# Every GPU check of tunekit in one run, printed as it goes, in under 8 minutes on one H100/H200:
#   1. tests/test_gpu.py (CUDA end to end: accuracy, exact resume, sharing, packs, CUDA graph);
#   2. benchmarks/gpu.py: one trial, four sharing, packs of 16, 64 and 256, eager and captured;
#   3. the as-run study (experiments/assignment6_as_run.yaml, 25 epochs × 3 seeds) if the packed
#      rate just measured says it fits in the time left; its report goes to $OUT (or ./gpu_out).
#
#   bash benchmarks/gpu_all.sh            # on a GPU machine, from the repository root
#   bash benchmarks/gpu_all.sh --small    # every size shrunk, on the CPU: a check of the script
#
# Needs the MNIST files ($TUNEKIT_DATA_DIR, else ./data). Python packages the machine lacks
# (ray, mlflow, pydantic, optuna, ...) can come as wheels in .whl/, installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_ALL_BUDGET:-450}  # seconds for the whole run
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ "${1:-}" = "--small" ]; then
  echo "== small: the script's steps on the CPU with tiny sizes (no GPU figures) =="
  python3 benchmarks/gpu.py --device cpu --images 1024 --epochs 2 --share 2 --packs 2,4 \
    --pack-images 512 --json "$OUT/gpu.json" || exit 1
  python3 -m tunekit sweep experiments/smoke.yaml --set train.epochs=1 --set data.subset=512 \
    --set train.device=cpu --dry-run | tail -1
  echo "small check done in $(($(date +%s) - START)) s"
  exit 0
fi

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0), torch.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== 1. tests/test_gpu.py ($(left) s left) =="
timeout $(( $(left) / 2 )) python3 -m pytest -q -s tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"

echo "== 2. benchmarks/gpu.py ($(left) s left) =="
timeout $(( $(left) - 60 )) python3 benchmarks/gpu.py --json "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/gpu.log"

echo "== 3. the as-run study ($(left) s left) =="
NEED=$(python3 - "$OUT/gpu.json" <<'EOF'
import json, sys
try:
    figures = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(10**9); raise SystemExit
rate = max(v for k, v in figures.items() if k.startswith("pack") and isinstance(v, float))
images = 36 * 25 * 60000 * 1.15  # 36 trials × 25 epochs × 60,000 images, 15% for evaluation
print(int(images / rate) + 60)   # + start-up
EOF
)
if [ "$NEED" -lt "$(left)" ]; then
  echo "the study needs about $NEED s at the packed rate: running it"
  timeout $(left) python3 -m tunekit sweep experiments/assignment6_as_run.yaml \
    --set sweep.storage="$PWD/$OUT/runs" --tracking-uri "sqlite:///$PWD/$OUT/mlflow.db" \
    2>&1 | tail -40
  python3 -m tunekit report experiments/assignment6_as_run.yaml \
    --tracking-uri "sqlite:///$PWD/$OUT/mlflow.db" -f markdown --out "$OUT/as_run" | tail -5
else
  echo "the study needs about $NEED s at the packed rate, $(left) s are left: not run"
fi
echo "done in $(($(date +%s) - START)) s"
