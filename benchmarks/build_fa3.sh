#!/usr/bin/env bash
# Build FlashAttention-3's forward (hdim 128, bf16 + e4m3, sm90a only) as a wheel for the fast-preset
# benchmark (benchmarks.fp8_candidates.fa3_fp8_sdpa); FA3 has no wheel on PyPI.
#   benchmarks/build_fa3.sh <flash-attention checkout> [wheel dir, default .whl_fa3]
# The checkout needs `hopper/`, `README.md` and the cutlass submodule's `include/` (csrc/cutlass); measured
# with flash-attention 0251105a and cutlass 7127592 (the submodule's commit). Needs nvcc >= 12.3 (13.0 here)
# and ninja; no GPU: a CPU-only torch builds it too (its CUDA_HOME is set from $CUDA_HOME below, and
# LDFLAGS=-L<a CUDA torch's torch/lib> gives the linker libtorch_cuda). FA3 targets torch's stable ABI
# (>= 2.9), so the wheel loads with any later torch. ~3.5 min on 2 cores.
# Every feature but the plain forward is switched off: 3 CUDA files instead of ~450.
set -euo pipefail
src="$(cd "${1:?usage: build_fa3.sh <flash-attention checkout> [wheel dir]}" && pwd)"
wheel_dir="$(mkdir -p "${2:-.whl_fa3}" && cd "${2:-.whl_fa3}" && pwd)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"  # its include/ and bin/nvcc
for feature in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN CLUSTER HDIM64 HDIM96 \
  HDIM192 HDIM256 SM80 HDIMDIFF64 HDIMDIFF192; do
  export "FLASH_ATTENTION_DISABLE_$feature=TRUE"
done
# FORCE_BUILD: no prebuilt-wheel download; OFFLINE_BUILD: no nvcc download.
export FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_OFFLINE_BUILD=1 TORCH_CUDA_ARCH_LIST=9.0a
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" NVCC_THREADS="${NVCC_THREADS:-1}"
# setup.py runs `git submodule update` unconditionally: a stub keeps it from touching the network.
stub="$(mktemp -d)" && printf '#!/bin/sh\nexit 0\n' >"$stub/git" && chmod +x "$stub/git"
cd "$src/hopper"
PATH="$stub:$PATH" python3 - bdist_wheel --dist-dir "$wheel_dir" <<'EOF'
import os
import runpy
import sys

import torch.utils.cpp_extension as cpp_extension

cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # None in a CPU-only torch
sys.argv[0] = "setup.py"
runpy.run_path("setup.py", run_name="__main__")
EOF
ls -l "$wheel_dir"
