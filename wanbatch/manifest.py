"""Contract 3: the manifest written beside every video, enough to reproduce it and to account for it.

One obvious name per field; sections group what belongs together. `None` means "not known here"
(e.g. no instance metadata on a laptop), never "not recorded".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class WeightFileRecord(_Section):
    path: str
    sha256: str  # of the file as loaded (the derived bf16 file where the cache converted it)
    bytes: int
    source_sha256: str | None = None  # of the downloaded original where the cache converted it


class ModelRecord(_Section):
    repo_id: str
    revision: str
    commit: str | None
    source: str  # hub | local | s3
    files: list[WeightFileRecord]


class RuntimeRecord(_Section):
    device: str  # cuda | cpu
    dtype: dict[str, str]  # component -> torch dtype
    quantization: str | None = None  # None (bf16, lossless) | "fp8": FP8 linear layers (a fast preset)
    step_cache: str | None = None  # None | "taylorseer": cached steps skip the blocks (a fast preset)
    offload: str
    offload_reason: str
    text_encoder_device: str
    vae_tiling: bool
    attention_backend: str
    compile: str = "none"  # regional | none: torch.compile of the experts' repeated blocks
    max_sequence_length: int
    gpus: int = 1  # ranks that rendered the item together
    context_parallel: str | None = None  # e.g. "ulysses:4": how the experts' sequence was split


class VersionsRecord(_Section):
    python: str
    torch: str
    cuda: str | None
    diffusers: str
    transformers: str
    project: str
    image_tag: str | None
    image_digest: str | None


class HardwareRecord(_Section):
    gpu_name: str | None
    gpu_memory_bytes: int | None
    gpu_driver: str | None
    instance_type: str | None
    lifecycle: Literal["spot", "on-demand"] | None
    availability_zone: str | None


class TimingsRecord(_Section):
    queue_wait_s: float | None
    checkpoint_fetch_s: float | None
    load_s: float | None
    text_encode_s: float | None
    denoise_s: float | None
    step_s: list[float]  # this attempt's steps; a resumed attempt lists only the steps it ran
    vae_decode_s: float | None
    encode_s: float | None
    upload_s: float | None
    total_s: float | None


class AttemptRecord(_Section):
    attempt: int
    start_step: int
    started_at: str


class OutputRecord(_Section):
    key: str
    sha256: str
    bytes: int
    frame_count: int
    width: int
    height: int
    fps: int
    codec: str
    pix_fmt: str


class CostRecord(_Section):
    usd: float | None
    price_per_hour_usd: float | None
    price_source: str | None  # spot-price-history | on-demand-table | None
    billed_seconds: float  # this item's render plus its share of the container's setup
    items_sharing_setup: int


class Manifest(_Section):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    item_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float
    boundary_ratio: float | None
    flow_shift: float
    scheduler: str  # class name
    scheduler_config: dict
    model: ModelRecord
    runtime: RuntimeRecord
    versions: VersionsRecord
    hardware: HardwareRecord
    timings: TimingsRecord
    attempts: list[AttemptRecord] = Field(min_length=1)
    output: OutputRecord
    cost: CostRecord
    created_at: str

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)
