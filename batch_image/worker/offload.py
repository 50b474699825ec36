"""Choose and apply how the model's weights share GPU memory (contract 5: OFFLOAD, TEXT_ENCODER_DEVICE).

`choose_plan` is a pure function of the GPU and host sizes and the frame size, so the `auto` choice is
unit-tested; `apply_plan` maps the chosen mode onto diffusers' offload hooks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wanbatch.worker_options import OFFLOAD_MODES, TEXT_ENCODER_DEVICES

GiB = 1024**3

# Estimates for Wan2.2-T2V-A14B in bf16 (transformers, UMT5-XXL encoder) and fp32 (VAE).
# They only steer `auto`; the exact bytes of the weights in use replace them when known.
A14B_EXPERT_BYTES = int(28.6e9)
A14B_TEXT_ENCODER_BYTES = int(11.4e9)
A14B_VAE_BYTES = int(0.5e9)
RESERVE_BYTES = 3 * GiB  # CUDA context, allocator fragmentation, the prompt embeddings
HOST_RESERVE_BYTES = 8 * GiB  # Python, PyTorch, CUDA's host allocations, the decoded frames and the MP4
ACTIVATION_BYTES_PER_TOKEN = 120_000  # measured order for a 5120-wide block in bf16, one CFG branch at a time
VAE_DECODE_BYTES_PER_PIXEL = 12_000  # fp32 Wan VAE decode peak per output pixel of one frame (causal cache)
# Benchmark hook: use only this fraction of the GPU's memory, e.g. 48/141 to behave like a 48 GB L40S on an
# H200. Both the plan and torch's allocator (pipeline.load_pipeline) honour it.
MEMORY_FRACTION_ENV = "WANBATCH_GPU_MEMORY_FRACTION"


@dataclass(frozen=True)
class Footprint:
    """Bytes of each component as they sit in memory."""

    expert: int = A14B_EXPERT_BYTES
    text_encoder: int = A14B_TEXT_ENCODER_BYTES
    vae: int = A14B_VAE_BYTES


@dataclass(frozen=True)
class OffloadPlan:
    offload: str  # none | model | group | sequential
    text_encoder_device: str  # gpu | cpu
    vae_tiling: bool
    reason: str


def gpu_memory_fraction(env: Mapping[str, str] = os.environ) -> float | None:
    """The simulated-card fraction from WANBATCH_GPU_MEMORY_FRACTION, or None when unset."""
    raw = env.get(MEMORY_FRACTION_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{MEMORY_FRACTION_ENV} must be a number in (0, 1], got {raw!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{MEMORY_FRACTION_ENV} must be in (0, 1], got {value}")
    return value


def transformer_tokens(width: int, height: int, frames: int) -> int:
    """Sequence length the transformer sees (VAE 4x temporal, 8x spatial, patch 1x2x2)."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def choose_plan(
    *,
    gpu_total_bytes: int | None,
    host_ram_bytes: int,
    width: int,
    height: int,
    frames: int,
    footprint: Footprint = Footprint(),
    offload: str = "auto",
    text_encoder_device: str = "auto",
) -> OffloadPlan:
    """Resolve `auto` for offload and text-encoder device; explicit choices are kept as given."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"OFFLOAD must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    if text_encoder_device not in TEXT_ENCODER_DEVICES:
        raise ValueError(
            f"TEXT_ENCODER_DEVICE must be one of {', '.join(TEXT_ENCODER_DEVICES)}, "
            f"got {text_encoder_device!r}"
        )
    if gpu_total_bytes is None:  # CPU only: nothing to offload to or from
        return OffloadPlan("none", "cpu", False, "no GPU: everything runs on the CPU")
    fraction = gpu_memory_fraction()
    if fraction is not None:
        gpu_total_bytes = int(gpu_total_bytes * fraction)

    activations = transformer_tokens(width, height, frames) * ACTIVATION_BYTES_PER_TOKEN
    everything = 2 * footprint.expert + footprint.text_encoder + footprint.vae
    one_expert = footprint.expert + activations + RESERVE_BYTES
    reason = ""
    if offload == "auto":
        if everything + activations + RESERVE_BYTES <= gpu_total_bytes:
            offload, reason = "none", "both experts, text encoder and VAE fit on the GPU"
        elif one_expert <= gpu_total_bytes and host_ram_bytes >= everything + HOST_RESERVE_BYTES:
            offload, reason = "model", "one expert at a time fits on the GPU"
        elif one_expert <= gpu_total_bytes:
            offload, reason = "swap", "one expert fits on the GPU, both do not fit in host memory"
        elif (
            host_ram_bytes >= everything
            and footprint.expert // 10 + activations + RESERVE_BYTES <= gpu_total_bytes
        ):
            offload, reason = "group", "an expert does not fit: stream its blocks from host memory"
        else:
            offload, reason = "sequential", "little GPU memory: stream each layer from host memory"

    if text_encoder_device == "auto" and offload == "swap":
        # The expert stays on the GPU during the whole item: UMT5 (seconds per prompt) runs on the CPU.
        text_encoder_device = "cpu"
    if text_encoder_device == "auto":
        # With everything resident the encoder must fit beside the experts; otherwise it is swapped in alone.
        resident = 2 * footprint.expert + footprint.vae + activations if offload == "none" else 0
        fits = resident + footprint.text_encoder + RESERVE_BYTES <= gpu_total_bytes
        text_encoder_device = "gpu" if fits else "cpu"

    # What stays on the GPU while the VAE decodes decides whether decode must be tiled.
    resident_at_decode = 2 * footprint.expert + footprint.vae if offload == "none" else footprint.vae
    if offload == "none" and text_encoder_device == "gpu":
        resident_at_decode += footprint.text_encoder
    decode = width * height * VAE_DECODE_BYTES_PER_PIXEL
    vae_tiling = resident_at_decode + decode + RESERVE_BYTES > gpu_total_bytes
    return OffloadPlan(offload, text_encoder_device, vae_tiling, reason or "as requested")


def apply_plan(pipe, plan: OffloadPlan, device: str) -> None:
    """Place the pipeline's components on `device` as `plan` says (diffusers/accelerate hooks)."""
    import torch

    if device == "cpu":
        pipe.to("cpu")
        return
    if plan.text_encoder_device == "cpu":
        pipe._exclude_from_cpu_offload = ["text_encoder"]
    if plan.offload == "none":
        pipe.to(device)
    elif plan.offload == "model":
        # Hooks follow text_encoder->transformer->transformer_2->vae, the order our loop calls them in.
        pipe.enable_model_cpu_offload(device=device)
    elif plan.offload == "swap":
        # The experts are not in the pipeline: worker.experts.ExpertSwap loads each onto the GPU in turn.
        pipe.vae.to(device)
        if plan.text_encoder_device == "gpu":
            pipe.text_encoder.to(device)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.offload == "group":
        from diffusers.hooks import apply_group_offloading

        onload = torch.device(device)
        for name in ("transformer", "transformer_2", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is None or (name == "text_encoder" and plan.text_encoder_device == "cpu"):
                continue
            apply_group_offloading(
                module,
                onload_device=onload,
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
            )
        pipe.vae.to(device)
    else:
        raise ValueError(f"unknown offload mode {plan.offload!r}")
    if plan.text_encoder_device == "cpu":
        pipe.text_encoder.to("cpu")
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
