"""Contract 4: the resolved run spec (`runs/<run_id>/spec.json`), run ids and seed derivation.

The spec is the job's only input: every item is fully resolved, so the job applies no defaults.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wanbatch.errors import SpecError

SPEC_VERSION = 1
DEFAULT_MODEL_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
DEFAULT_MODEL_REVISION = "main"
# Wan's CLI sizes, W*H.
SUPPORTED_SIZES: tuple[tuple[int, int], ...] = ((1280, 720), (720, 1280), (832, 480), (480, 832))
ITEM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_SEED = 2**32  # seeds are integers in [0, 2**32)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    id: str = Field(min_length=1)
    revision: str = Field(default=DEFAULT_MODEL_REVISION, min_length=1)


class Source(_Strict):
    bucket: str
    key: str
    etag: str | None = None


class SpecItem(_Strict):
    id: str = Field(pattern=ITEM_ID_PATTERN)
    prompt: str = Field(min_length=1)
    negative_prompt: str
    seed: int = Field(ge=0, lt=MAX_SEED)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    num_frames: int = Field(ge=1)
    fps: int = Field(ge=1)
    steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    guidance_scale_2: float = Field(ge=0)
    flow_shift: float = Field(gt=0)

    @model_validator(mode="after")
    def _frames_are_4k_plus_1(self) -> SpecItem:
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1, got {self.num_frames}")
        return self


class RunSpec(_Strict):
    spec_version: Literal[1] = SPEC_VERSION
    run_id: str = Field(min_length=1)
    source: Source
    model: ModelRef
    gpus: int = Field(default=1, ge=1)
    items_per_job: int = Field(default=1, ge=1)
    items: list[SpecItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> RunSpec:
        ids = [item.id for item in self.items]
        if len(ids) != len(set(ids)):
            raise ValueError("item ids must be unique")
        return self

    @property
    def num_children(self) -> int:
        """How many Batch array children render this run."""
        return -(-len(self.items) // self.items_per_job)

    def chunk(self, array_index: int) -> list[SpecItem]:
        """Items rendered by array child `array_index` (contract 4)."""
        if not 0 <= array_index < self.num_children:
            raise SpecError(
                f"array index {array_index} is out of range: run {self.run_id} has "
                f"{self.num_children} child job(s) of {self.items_per_job} item(s)"
            )
        start = array_index * self.items_per_job
        return self.items[start : start + self.items_per_job]


def parse_spec(raw: str | bytes) -> RunSpec:
    """Parse and validate spec JSON; raises SpecError (exit 64) with pydantic's message."""
    from pydantic import ValidationError

    try:
        return RunSpec.model_validate_json(raw)
    except ValidationError as exc:
        raise SpecError(f"invalid run spec: {exc}") from exc


def slugify_stem(key: str) -> str:
    """The file name's stem as `[a-z0-9-]`, at most 40 characters (never empty)."""
    name = PurePosixPath(key).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    # "café à Paris" -> "cafe a Paris": keep the letters, drop only their accents.
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40].strip("-")
    return slug or "prompts"


def make_run_id(*, bucket: str, key: str, etag: str, sequencer: str, time: datetime) -> str:
    """`<stem>-<yyyymmddThhmmssZ>-<hash8>` (contract 2); a redelivered event maps to the same id."""
    stamp = time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256("\n".join([bucket, key, etag, sequencer]).encode()).hexdigest()[:8]
    return f"{slugify_stem(key)}-{stamp}-{digest}"


def derive_seed(run_id: str, item_id: str) -> int:
    """A missing seed, derived deterministically so every output is reproducible."""
    digest = hashlib.sha256(f"{run_id}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # in [0, 2**32)


def parse_size(text: str) -> tuple[int, int]:
    """`W*H` or `WxH` -> (W, H); raises ValueError naming the supported sizes."""
    match = re.fullmatch(r"\s*(\d+)\s*[*xX]\s*(\d+)\s*", text)
    supported = ", ".join(f"{w}*{h}" for w, h in SUPPORTED_SIZES)
    if not match:
        raise ValueError(f"size must look like W*H (one of {supported}), got {text!r}")
    size = int(match.group(1)), int(match.group(2))
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"size {text!r} is not supported; use one of {supported}")
    return size
