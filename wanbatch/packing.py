"""How many items one Batch array child renders (`items_per_job`, contract 4).

Loading Wan2.2-A14B (two 14B experts, text encoder, VAE) costs minutes, so a child that renders several
items amortises one load over them. Two limits bound the count:

1. Time: a child's estimated time (one load + its items) stays under the configured maximum per job, so a
   Spot reclaim loses little and the job's timeout is not hit. Always at least 1 item.
2. Fleet: never fewer children than the fleet can run at once (`parallel_slots`), capped by the item
   count, so packing never leaves a GPU idle: items_per_job <= n_items // parallel_slots.

The smaller of the two wins; then the items are spread evenly over the resulting number of children.
An explicit ITEMS_PER_JOB setting bypasses all of this.

The per-step timings below are ESTIMATES for one NVIDIA L40S (48 GB, g6e) in bf16 with model offload, not
measurements; replace them from BENCHMARKS.md when measured numbers exist. They are the only place such
numbers live.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from wanbatch.spec import SpecItem

REFERENCE_FRAMES = 81  # the frame count the per-step table was estimated at
# Seconds per denoising step at REFERENCE_FRAMES, with classifier-free guidance (two transformer passes).
SECONDS_PER_STEP: dict[tuple[int, int], float] = {
    (1280, 720): 60.0,
    (720, 1280): 60.0,
    (832, 480): 17.0,
    (480, 832): 17.0,
}
# VAE decode, MP4 encode and upload per item at REFERENCE_FRAMES.
SECONDS_AFTER_DENOISE: dict[tuple[int, int], float] = {
    (1280, 720): 90.0,
    (720, 1280): 90.0,
    (832, 480): 30.0,
    (480, 832): 30.0,
}
MODEL_LOAD_SECONDS = 120.0  # from the EFS cache into GPU/CPU memory, once per child
# Attention is quadratic and the rest linear in the token count, which grows with the frame count.
FRAME_SCALING_EXPONENT = 1.5


def estimate_item_seconds(item: SpecItem) -> float:
    """Estimated render time of one item on one L40S, excluding the model load."""
    size = (item.width, item.height)
    latent_ratio = ((item.num_frames - 1) // 4 + 1) / ((REFERENCE_FRAMES - 1) // 4 + 1)
    frames_factor = latent_ratio**FRAME_SCALING_EXPONENT
    # Guidance <= 1 skips the unconditional pass: half the work for the expert that uses it.
    cfg_factor = sum(1.0 if scale > 1 else 0.5 for scale in (item.guidance_scale, item.guidance_scale_2)) / 2
    denoise = SECONDS_PER_STEP[size] * item.steps * frames_factor * cfg_factor
    return denoise + SECONDS_AFTER_DENOISE[size] * latent_ratio


def items_per_job(
    n_items: int,
    *,
    est_seconds_per_item: float,
    max_job_minutes: float,
    parallel_slots: int,
    load_seconds: float = MODEL_LOAD_SECONDS,
) -> int:
    """The module docstring's rule as a pure function; always in [1, n_items]."""
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    if est_seconds_per_item <= 0 or max_job_minutes <= 0:
        raise ValueError("est_seconds_per_item and max_job_minutes must be positive")
    by_time = math.floor((max_job_minutes * 60 - load_seconds) / est_seconds_per_item)
    by_fleet = n_items // max(1, parallel_slots)
    per_job = max(1, min(by_time, by_fleet, n_items))
    children = math.ceil(n_items / per_job)
    return math.ceil(n_items / children)  # even chunks: same child count, smaller largest chunk


def choose_items_per_job(items: Iterable[SpecItem], *, max_job_minutes: float, parallel_slots: int) -> int:
    """items_per_job for a run, sized by its slowest item so every child stays under the limit."""
    items = list(items)
    slowest = max(estimate_item_seconds(item) for item in items)
    return items_per_job(
        len(items),
        est_seconds_per_item=slowest,
        max_job_minutes=max_job_minutes,
        parallel_slots=parallel_slots,
    )
