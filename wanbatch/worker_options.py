"""Contract 5's choice-valued job settings: the worker validates them, the CLI offers them, the stack sets
them. One list each, so a new mode is added in one place."""

from __future__ import annotations

OFFLOAD_MODES = ("auto", "none", "model", "swap", "group", "sequential")
TEXT_ENCODER_DEVICES = ("auto", "gpu", "cpu")
# The fast presets, off ("none") by default: they change the frames (BENCHMARKS.md).
QUANTIZATION_MODES = ("none", "fp8")
STEP_CACHES = ("none", "taylorseer")
