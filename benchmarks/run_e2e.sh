#!/usr/bin/env bash
# The worker end to end on a GPU machine, real-size Wan2.2-T2V-A14B with random weights (benchmarks/e2e.py).
#   benchmarks/run_e2e.sh quick   # build the checkpoint; 480p 4 steps; 720p 4 steps as a 48 GB card (~6 min)
#   benchmarks/run_e2e.sh full    # 480p 40 steps (reuses the checkpoint if the machine kept it; ~5 min)
#   benchmarks/run_e2e.sh full2   # 480p 40 steps with cold caches, then again with the caches it filled (~9 min)
#   benchmarks/run_e2e.sh warm    # 480p 2 steps (fills the compile and FA4 caches), then 480p 40 steps warm (~6 min)
#   benchmarks/run_e2e.sh colddisk # 480p 40 steps, two distinct expert files read from a cold disk (~85 GB free:
#                                  # the 2-GPU kind's disk; ~8 min)
#   benchmarks/run_e2e.sh cp2      # the worker itself on 2 GPUs (context parallelism), tiny shapes (~1 min)
#   benchmarks/run_e2e.sh swap     # 720p 4 steps as a 48 GB card with OFFLOAD=swap; 480p 40 steps TaylorSeer
#   benchmarks/run_e2e.sh swapfull # the swap run, then 480p 40 steps lossless (~9.5 min)
#   benchmarks/run_e2e.sh swap720  # 720p 4 steps with the whole card, then as a 48 GB card with OFFLOAD=swap:
#                                  # the 48 GB mode's time ratio from one call (~7 min)
#   benchmarks/run_e2e.sh swap480  # 480p 4 steps with the whole card, then 480p 40 steps as a 48 GB card with
#                                  # OFFLOAD=swap, measured (~7 min; build the checkpoint in an earlier call)
#   benchmarks/run_e2e.sh fp8      # 720p 4 steps, whole card, lossless then QUANTIZATION=fp8 (~6 min)
#   benchmarks/run_e2e.sh 720p    # 720p 4 steps with the whole card (~3 min)
# Wheels the machine lacks travel in .whl/ (see BENCHMARKS.md). Results merge into $BENCH_RESULTS.
set -uo pipefail
part="${1:?usage: run_e2e.sh quick|full|full2|warm|colddisk|cp2|swap|swapfull|swap720|swap480|fp8|720p}"
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
# PyAV's wheel does not fit beside the others in one transfer; a small stand-in reads the MP4 instead.
python3 -c "import av" 2>/dev/null || export PYTHONPATH="$PWD/benchmarks/gpu_shims:$PYTHONPATH"
export PYTHONPATH="$PWD/batch_image:$PWD:$PYTHONPATH"  # worker and wanbatch, as in the image
# ... and without the packages the image lacks (peft: diffusers imports it when present, ~2.6 s).
export PYTHONPATH="$PWD/benchmarks/image_only:$PYTHONPATH"
export BENCH_RESULTS="${BENCH_RESULTS:-$PWD/benchmarks/results.json}" PYTHONUNBUFFERED=1
out_dir="$(dirname "$BENCH_RESULTS")"
mkdir -p "$out_dir"
[ -f "$BENCH_RESULTS" ] || cp benchmarks/results.json "$BENCH_RESULTS"
model=outputs/e2e/model  # git-ignored; a warm machine keeps it between calls
# An L40S shows 44.4 GiB to torch; the H200 139.8 GiB.
l40s_fraction=0.3176
e2e() { timeout "$1" python3 -m benchmarks.e2e "${@:2}"; }
# The SM clock, power and temperature every 5 s: whether a long run's steps are slower from throttling.
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -l 5 \
  >"$out_dir/gpu_clocks_$part.csv" 2>&1 &
clock_pid=$!
trap 'kill "$clock_pid" 2>/dev/null' EXIT
# flash-attn-4's persistent kernel cache (the worker turns it on only with a NVMe tier, LOCAL_CACHE_DIR).
fa4_cache=(--env FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
  --env "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=$PWD/outputs/e2e/runs/cache/flash-attn-cute")
case "$part" in
  quick)
    e2e 300 build --dir "$model" || exit 1
    e2e 240 run --model "$model" --name 480p_4 --size '832*480' --steps 4
    e2e 300 run --model "$model" --name 720p_4_48gb --size '1280*720' --steps 4 --memory-fraction "$l40s_fraction" ;;
  full)
    e2e 300 build --dir "$model" || exit 1
    e2e 540 run --model "$model" --name 480p_40 --size '832*480' --steps 40 ;;
  full2)
    e2e 300 build --dir "$model" || exit 1
    e2e 300 run --model "$model" --name 480p_40 --size '832*480' --steps 40 "${fa4_cache[@]}"
    e2e 290 run --model "$model" --name 480p_40_warm --size '832*480' --steps 40 "${fa4_cache[@]}" ;;
  warm)
    e2e 300 build --dir "$model" || exit 1
    e2e 200 run --model "$model" --name 480p_2_fill --size '832*480' --steps 2 "${fa4_cache[@]}"
    e2e 300 run --model "$model" --name 480p_40_warm --size '832*480' --steps 40 "${fa4_cache[@]}" ;;
  colddisk)
    e2e 400 build --dir outputs/e2e/model_distinct --distinct-experts || exit 1
    e2e 400 run --model outputs/e2e/model_distinct --name 480p_40_colddisk --size '832*480' --steps 40 \
      --drop-caches ;;
  cp2)
    e2e 200 build --tiny --dir outputs/e2e/tiny || exit 1
    e2e 120 run --model outputs/e2e/tiny --name tiny1gpu_4 --size '832*480' --steps 4 --gpus 1
    e2e 180 run --model outputs/e2e/tiny --name tiny2gpu_4 --size '832*480' --steps 4 --gpus 2 ;;
  swap)
    e2e 300 build --dir "$model" || exit 1
    e2e 280 run --model "$model" --name 720p_4_48gb --size '1280*720' --steps 4 --memory-fraction "$l40s_fraction" \
      --offload swap
    e2e 240 run --model "$model" --name taylorseer480p_40 --size '832*480' --steps 40 --env STEP_CACHE=taylorseer ;;
  swapfull)
    e2e 300 build --dir "$model" || exit 1
    e2e 280 run --model "$model" --name 720p_4_48gb --size '1280*720' --steps 4 --memory-fraction "$l40s_fraction" \
      --offload swap
    e2e 300 run --model "$model" --name 480p_40 --size '832*480' --steps 40 ;;
  swap720)
    e2e 150 build --dir "$model" || exit 1
    e2e 200 run --model "$model" --name 720p_4 --size '1280*720' --steps 4
    e2e 230 run --model "$model" --name 720p_4_48gb --size '1280*720' --steps 4 --memory-fraction "$l40s_fraction" \
      --offload swap ;;
  swap480)
    e2e 150 build --dir "$model" || exit 1
    e2e 150 run --model "$model" --name 480p_4 --size '832*480' --steps 4
    e2e 400 run --model "$model" --name 480p_40_48gb --size '832*480' --steps 40 --memory-fraction "$l40s_fraction" \
      --offload swap ;;
  fp8)
    e2e 300 build --dir "$model" || exit 1
    e2e 240 run --model "$model" --name 720p_4 --size '1280*720' --steps 4
    e2e 240 run --model "$model" --name fp8720p_4 --size '1280*720' --steps 4 --env QUANTIZATION=fp8 ;;
  720p)
    e2e 300 build --dir "$model" || exit 1
    e2e 300 run --model "$model" --name 720p_4 --size '1280*720' --steps 4 ;;
  *)
    echo "unknown part: $part (quick|full|full2|warm|colddisk|cp2|swap|swapfull|swap720|swap480|fp8|720p)" >&2; exit 64 ;;
esac
