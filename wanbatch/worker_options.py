"""Contract 5's choice-valued job settings: the worker validates them, the CLI offers them, the stack sets
them. One list each, so a new mode is added in one place."""

from __future__ import annotations

OFFLOAD_MODES = ("auto", "none", "model", "swap", "group", "sequential")
TEXT_ENCODER_DEVICES = ("auto", "gpu", "cpu")
# The fast presets, off ("none") by default: they change the frames (BENCHMARKS.md).
QUANTIZATION_MODES = ("none", "fp8")
STEP_CACHES = ("none", "taylorseer")
# Attention kernels (worker.attention): `auto` picks the fastest exact one installed for the GPU; `fa4` is
# FlashAttention-4, the others are diffusers backend names. Exact kernels differ only in rounding, but that
# changes the bytes: a manifest records the one used and `wanbatch reproduce` asks for it again.
ATTENTION_BACKENDS = (
    "auto",
    "native",
    "fa4",
    "flash",
    "_flash_3",
    "sage",
    "_native_cudnn",
    "_native_flash",
    "flex",
)
