#!/usr/bin/env bash
# Run benchmark parts on a GPU machine that has torch but no internet.
#   benchmarks/run_gpu.sh dit        # DiT step, attention backends, official WanModel, regional compile (~8 min)
#   benchmarks/run_gpu.sh cp         # context parallelism, 1 vs 2 GPUs at 720p (needs 2 GPUs; ~6 min)
#   benchmarks/run_gpu.sh rest       # VAE decode, UMT5 encode, resume save, checkpoint load rate (~3 min)
# Wheels missing there (diffusers, transformers, regex) travel in .whl/; the official model files in .official/.
# Results merge into $BENCH_RESULTS (default benchmarks/results.json); logs and per-part JSON go beside it.
set -uo pipefail
part="${1:?usage: run_gpu.sh dit|cp|rest}"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export BENCH_RESULTS="${BENCH_RESULTS:-$PWD/benchmarks/results.json}" PYTHONUNBUFFERED=1
out_dir="$(dirname "$BENCH_RESULTS")"
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$out_dir/nvidia-smi.txt" 2>&1
case "$part" in
  dit)
    timeout 560 python3 -m benchmarks.dit 2>&1 | tee "$out_dir/dit.log" ;;
  cp)
    timeout 120 python3 -m benchmarks.cp_scaling --tiny 2>&1 | tee "$out_dir/cp_tiny.log"
    timeout 480 python3 -m benchmarks.cp_scaling 2>&1 | tee "$out_dir/cp_scaling.log" ;;
  rest)
    timeout 240 python3 -m benchmarks.vae_text --text-cpu 2>&1 | tee "$out_dir/vae_text.log"
    timeout 200 python3 -m benchmarks.io_rates --dir /tmp/bench_io --gb 12 2>&1 | tee "$out_dir/io_rates.log" ;;
  *)
    echo "unknown part: $part (dit|cp|rest)" >&2; exit 64 ;;
esac
