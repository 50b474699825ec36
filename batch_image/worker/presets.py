"""Fast presets, off by default: FP8 linears (QUANTIZATION=fp8, worker.fp8_linear) and step caching
(STEP_CACHE=taylorseer).

Both change the frames (a quality trade-off, measured in BENCHMARKS.md) and are recorded in the manifest, so
a reproduction sets them again. Neither is on by default: the defaults stay the fastest lossless settings.
"""

from __future__ import annotations

import re

import torch

from wanbatch.worker_options import QUANTIZATION_MODES, STEP_CACHES
from worker.fp8_linear import swap_fp8_linears

FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (L40S, sm89) and Hopper (H100, sm90) on

# Only the 40 transformer blocks' linear layers (attention projections, cross-attention, FFN): they hold
# all of the non-attention FLOPs. The patch/time/text embeddings and the output projection stay bf16, as
# FP8 recipes for DiTs do, because their errors reach every token directly.
_FP8_MODULE = re.compile(r"blocks\.\d+\..+")

# TaylorSeer (arXiv 2503.06923) in diffusers' lite mode: on a cached step the blocks are skipped and the
# output projection is predicted from a first-order Taylor expansion over the last full steps. Per expert
# (each has its own hooks) the first 3 steps are full, then every 3rd: 18 of 40 full forwards at the
# A14B defaults (boundary 0.875, shift 12).
TAYLORSEER_INTERVAL = 3
TAYLORSEER_WARMUP_STEPS = 3


def check_quantization(mode: str, device: str) -> None:
    """Refuse FP8 where it cannot run, before the slow load (clear error instead of a `_scaled_mm` one)."""
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"QUANTIZATION must be one of {', '.join(QUANTIZATION_MODES)}, got {mode!r}")
    if mode == "none":
        return
    if not str(device).startswith("cuda"):
        raise ValueError(f"QUANTIZATION=fp8 needs an NVIDIA GPU with compute capability >= 8.9, not {device}")
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_MIN_CAPABILITY:
        raise ValueError(
            f"QUANTIZATION=fp8 needs compute capability >= 8.9 (L40S, H100); this GPU is sm"
            f"{capability[0]}{capability[1]}"
        )


def is_fp8_target(module: torch.nn.Module, name: str) -> bool:
    """A block's linear layer whose shapes FP8 matmuls accept (multiples of 16)."""
    return (
        isinstance(module, torch.nn.Linear)
        and bool(_FP8_MODULE.fullmatch(name))
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def apply_fp8(expert: torch.nn.Module, fast_accum: bool = False) -> int:
    """Dynamic FP8 (e4m3) activations and weights with per-row scales on the blocks' linears; the count.
    `fast_accum` (Float8RowwiseLinear's) stays off in the worker; benchmarks.presets measures it."""
    return swap_fp8_linears(expert, is_fp8_target, fast_accum)


def check_step_cache(mode: str) -> None:
    if mode not in STEP_CACHES:
        raise ValueError(f"STEP_CACHE must be one of {', '.join(STEP_CACHES)}, got {mode!r}")


def apply_step_cache(expert: torch.nn.Module, mode: str) -> None:
    """Hook diffusers' TaylorSeer cache onto one expert (its state resets after every item)."""
    check_step_cache(mode)
    if mode == "none":
        return
    from diffusers import TaylorSeerCacheConfig

    expert.enable_cache(
        TaylorSeerCacheConfig(
            cache_interval=TAYLORSEER_INTERVAL,
            disable_cache_before_step=TAYLORSEER_WARMUP_STEPS,
            max_order=1,
            use_lite_mode=True,
        )
    )


def full_forward_steps(expert_steps: int) -> int:
    """How many of an expert's steps run the whole network under STEP_CACHE=taylorseer (diffusers' rule)."""
    return sum(
        1
        for step in range(expert_steps)
        if step < TAYLORSEER_WARMUP_STEPS or (step - TAYLORSEER_WARMUP_STEPS - 1) % TAYLORSEER_INTERVAL == 0
    )
