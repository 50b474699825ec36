#!/usr/bin/env bash
# Run benchmark parts on a GPU machine that has torch but no internet.
#   benchmarks/run_gpu.sh dit        # DiT step, attention backends (FA4 if .whl_fa4*/ came), official WanModel, compile (~5 min)
#   benchmarks/run_gpu.sh cp         # context parallelism, 1 vs 2 GPUs at 720p (needs 2 GPUs; ~6 min)
#   benchmarks/run_gpu.sh presets    # compiled FP8 linears (QUANTIZATION=fp8's), then + cuDNN's FP8 attention
#                                    # (cudnn-frontend wheel in .whl_cudnn/) in the compiled blocks (~4 min)
#   benchmarks/run_gpu.sh presets_sage  # FP8 linears + SageAttention 2 built from .sage2/ (~8 min; needs the
#                                    # lossless reference `presets` left on the same machine, else measures it)
#   benchmarks/run_gpu.sh presets_fa3   # lossless, FP8 linears, FP8 linears + FlashAttention-3's FP8 forward
#                                    # (its wheel in .whl_fa3/, built by benchmarks/build_fa3.sh; ~5 min;
#                                    # FP8_IMPL=scaled_mm_fast: the linears with fast accumulation)
#   benchmarks/run_gpu.sh rest       # VAE decode, UMT5 encode, resume save, checkpoint load rate (~3 min)
# Wheels missing there (diffusers, transformers, regex) travel in .whl/; the official model files in .official/.
# Results merge into $BENCH_RESULTS (default benchmarks/results.json); logs and per-part JSON go beside it.
set -uo pipefail
part="${1:?usage: run_gpu.sh dit|cp|presets|presets_sage|presets_fa3|rest}"
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
export BENCH_RESULTS="${BENCH_RESULTS:-$PWD/benchmarks/results.json}" PYTHONUNBUFFERED=1
out_dir="$(dirname "$BENCH_RESULTS")"
mkdir -p "$out_dir" outputs
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$out_dir/nvidia-smi.txt" 2>&1
case "$part" in
  dit)
    timeout 560 python3 -m benchmarks.dit 2>&1 | tee "$out_dir/dit.log" ;;
  cp)
    timeout 120 python3 -m benchmarks.cp_scaling --tiny 2>&1 | tee "$out_dir/cp_tiny.log"
    timeout 480 python3 -m benchmarks.cp_scaling 2>&1 | tee "$out_dir/cp_scaling.log" ;;
  presets)
    timeout 560 python3 -m benchmarks.presets --only lossless,fp8,fp8_cudnn --fp8-impl scaled_mm \
      --save-ref outputs/presets_ref.pt 2>&1 | tee "$out_dir/presets.log" ;;
  presets_sage)
    # SageAttention 2 has no wheel: build it (sm90 only) with this machine's nvcc (its setup.py reads a
    # README.md that the source archive leaves out); meanwhile measure the lossless reference if it is missing.
    (mkdir -p /tmp/sage_src && tar xzf .sage2/sageattention-src.tar.gz -C /tmp/sage_src && cd /tmp/sage_src \
      && touch README.md \
      && EXT_PARALLEL=4 MAX_JOBS=8 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip wheel --no-build-isolation --no-deps \
        -w /tmp/sage_whl . && python3 -m pip install -q --no-deps --target /tmp/site /tmp/sage_whl/*.whl) \
      >"$out_dir/sage_build.log" 2>&1 &
    build=$!
    [ -f outputs/presets_ref.pt ] || timeout 330 python3 -m benchmarks.presets --only lossless \
      --save-ref outputs/presets_ref.pt 2>&1 | tee "$out_dir/presets.log"
    wait "$build" && timeout 200 python3 -m benchmarks.presets --only fp8_sage --fp8-impl scaled_mm \
      --ref outputs/presets_ref.pt 2>&1 | tee "$out_dir/presets_sage.log" ;;
  presets_fa3)
    timeout 570 python3 -m benchmarks.presets --only lossless,fp8,fp8_fa3 --fp8-impl "${FP8_IMPL:-scaled_mm}" \
      ${PRESETS_ARGS:-} --save-ref outputs/presets_ref.pt 2>&1 | tee "$out_dir/presets_fa3.log" ;;
  rest)
    timeout 240 python3 -m benchmarks.vae_text --text-cpu 2>&1 | tee "$out_dir/vae_text.log"
    timeout 200 python3 -m benchmarks.io_rates --dir /tmp/bench_io --gb 12 2>&1 | tee "$out_dir/io_rates.log" ;;
  *)
    echo "unknown part: $part (dit|cp|presets|presets_sage|presets_fa3|rest)" >&2; exit 64 ;;
esac
