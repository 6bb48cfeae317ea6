#!/usr/bin/env bash
# The one device command of issue 12: the shared side-by-side runner (ours vs the official code on the same
# GPU, same process: pair inference, dense GA, GA at scale, MASt3R) through experiments/gpu_compat.py, then
# the MST initialisation ours vs official on the same GPU (experiments/bench_dense_ga.py --init-only).
#
# Once, here (CPU side), from the checkout root:   bash ../shared/tools/gpu/prepare.sh . "$F3D_REFERENCE_ROOT"
#   (lays out .gpu/: the runner, the official python code, wheels; git-ignored, a few MB)
# Then the device call (at most ~8.5 minutes of a 10-minute command; 15 minutes of device time in all):
#   run(command="bash experiments/run_gpu.sh", carry=[".gpu"], timeout_s=600)
# Results: $OUT/results.jsonl (one JSON line per measurement), $OUT/log.txt, $OUT/init.txt.
# Options: RUNNER_BUDGET (seconds, default 300: later sections are skipped past it), SECTIONS (default
# pair512,ga,mast3r,ga_scale), INIT_CONFIG (default 16,complete,512,384). CPU dry run of the same script:
#   DRY=1 bash experiments/run_gpu.sh      (tiny sizes, JAX on CPU; the official side needs torch)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; export OUT
PY=${PYTHON:-python3}
gpu=.gpu
if [ ! -f "$gpu/gpu_bench.py" ]; then
  echo "no $gpu/gpu_bench.py: run ../shared/tools/gpu/prepare.sh . REFERENCE_ROOT here first, and carry .gpu" >&2
  exit 2
fi
if ls "$gpu"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$gpu"/whl/*.whl \
    && export PYTHONPATH=/tmp/site
  if ! $PY -c "import f3d_jax.models.model" 2>"$OUT/import_err.txt"; then
    echo "the carried flax does not import here; using the machine's flax"; rm -rf /tmp/site/flax*
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if [ -n "${DRY:-}" ]; then
  runner_args=(--quick --sections "${SECTIONS:-ga}" --budget 120); init_cfg=${INIT_CONFIG:-4,complete,64,48}; dev=cpu
else
  runner_args=(--sections "${SECTIONS:-pair512,ga,mast3r,ga_scale}" --budget "${RUNNER_BUDGET:-300}")
  init_cfg=${INIT_CONFIG:-16,complete,512,384}; dev=gpu
fi
timeout 380 $PY experiments/gpu_compat.py "$gpu/gpu_bench.py" "${runner_args[@]}" 2>&1 \
  | grep -v -E "FutureWarning|autocast\(enabled|UserWarning: The given NumPy|sd = \{k: torch|it/s, lr=" | tee "$OUT/log.txt"
echo "== MST initialisation, ours vs official, device $dev, config $init_cfg"
F3D_REFERENCE_ROOT=$PWD/$gpu/ref timeout 120 $PY experiments/bench_dense_ga.py --init-only --device "$dev" \
  --threads 16 --config "$init_cfg" 2>&1 | tee "$OUT/init.txt"
