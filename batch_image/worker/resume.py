"""Spot resume: the denoising state saved to `resume/<run_id>/<item_id>/state.pt` at step boundaries.

One object holds everything (latents, step, the scheduler's multistep history, the RNG state, the spec hash
and the attempt history), so a single PUT replaces it atomically. A state is only trusted when it loads with
`weights_only=True`, names this item's spec hash and has the shapes the item needs; anything else is
ignored with a warning and the item starts from step 0. The worker writes it in a background thread
(`ResumeStore.save_in_background`): the next step runs while the bytes go to S3.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from wanbatch import layout
from wanbatch.spec import SpecItem
from worker.pipeline import SCHEDULER_STATE_FIELDS, DenoiseState, capture_state

log = logging.getLogger(__name__)

STATE_FORMAT = 1
STATE_NAME = "state.pt"


def state_key(run_id: str, item_id: str) -> str:
    return f"{layout.resume_prefix(run_id, item_id)}{STATE_NAME}"


def spec_hash(run_id: str, model_id: str, revision: str, commit: str | None, item: SpecItem) -> str:
    """What a state is only valid for: the run, the weights and every field of the item."""
    blob = json.dumps(
        {"run_id": run_id, "model": [model_id, revision, commit], "item": item.model_dump(mode="json")},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Saved:
    state: DenoiseState
    attempts: list[dict[str, Any]] = field(default_factory=list)


def serialize(state: DenoiseState, *, spec_hash: str, attempts: list[dict[str, Any]]) -> bytes:
    state.wait()  # a state captured on the GPU may still be on its way to host memory
    buffer = io.BytesIO()
    torch.save(
        {
            "format": STATE_FORMAT,
            "spec_hash": spec_hash,
            "step": state.step,
            "latents": state.latents,
            "scheduler": state.scheduler,
            "generator": state.generator,
            "attempts": json.dumps(attempts),
        },
        buffer,
    )
    return buffer.getvalue()


def deserialize(data: bytes, *, expected_hash: str, total_steps: int) -> Saved:
    """Parse and check a saved state; ValueError says why it cannot be trusted."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "corrupt": the message says which
        raise ValueError(f"state does not load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        raise ValueError("state has an unknown format")
    if raw.get("spec_hash") != expected_hash:
        raise ValueError("state belongs to a different spec, model or item")
    step = raw.get("step")
    if not isinstance(step, int) or not 0 < step <= total_steps:
        raise ValueError(f"state step {step!r} is outside 1..{total_steps}")
    latents, scheduler, generator = raw.get("latents"), raw.get("scheduler"), raw.get("generator")
    if (
        not isinstance(latents, torch.Tensor)
        or latents.dtype != torch.float32
        or not torch.isfinite(latents).all()
    ):
        raise ValueError("state latents are missing, not float32 or not finite")
    if not isinstance(scheduler, dict) or set(scheduler) != set(SCHEDULER_STATE_FIELDS):
        raise ValueError("state scheduler fields do not match this scheduler")
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8:
        raise ValueError("state RNG is missing")
    attempts = json.loads(raw.get("attempts") or "[]")
    return Saved(DenoiseState(step, latents, scheduler, generator), attempts)


class ResumeStore:
    """Load, save and clear one item's state in the run's storage."""

    def __init__(self, storage, run_id: str, item_id: str, spec_hash: str, total_steps: int):
        self.storage, self.key = storage, state_key(run_id, item_id)
        self.spec_hash, self.total_steps = spec_hash, total_steps
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future | None = None

    def load(self) -> Saved | None:
        try:
            data = self.storage.read(self.key)
        except FileNotFoundError:
            return None
        try:
            return deserialize(data, expected_hash=self.spec_hash, total_steps=self.total_steps)
        except ValueError as exc:
            log.warning("ignoring saved state %s: %s", self.storage.uri(self.key), exc)
            return None

    def save(self, state: DenoiseState, attempts: list[dict[str, Any]]) -> float:
        """Write the state; returns the seconds it took."""
        started = time.perf_counter()
        self.storage.write(self.key, serialize(state, spec_hash=self.spec_hash, attempts=attempts))
        return time.perf_counter() - started

    def save_in_background(self, state: DenoiseState, attempts: list[dict[str, Any]]) -> None:
        """Start writing the state and return: the loop's next step runs meanwhile.

        One write at a time, in order: a write still in flight is waited for first, and its error (a
        failed PUT) is raised here, as a blocking save would have raised it one step earlier.
        """
        self.flush()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resume-save")
        self._in_flight = self._writer.submit(self.save, state, list(attempts))

    def flush(self) -> None:
        """Wait for the write in flight, if any; raises its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def close(self) -> None:
        """Finish the write in flight and stop the writer thread. On the way out of an item: a failed write
        is logged, not raised (the item's own outcome is being reported)."""
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - any storage error; the saved state is then the one before
            log.warning("saving the resume state %s failed: %s", self.storage.uri(self.key), exc)
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def clear(self) -> None:
        self.flush()  # a write still in flight would bring the state back after the delete
        self.storage.delete(self.key)


def benchmark_state_save(
    storage, *, shape: tuple[int, ...] = (1, 16, 21, 90, 160), repeats: int = 3, device: str = "cpu"
) -> dict[str, Any]:
    """Time saving a 720p-sized state (81 frames -> 21 latent frames, 720/8 x 1280/8) to `storage`.

    The state holds four latent-sized fp32 tensors (latents, UniPC's two model outputs, its last sample),
    captured from `device` by the worker's own `capture_state`: `copy_s` is what the denoising loop waits
    for, `write_s` the save (waiting for the copies, serializing, writing), which the worker does in its
    writer thread. Call it on the GPU machine with an S3Storage to measure.
    """
    scheduler = SimpleNamespace(**{name: None for name in SCHEDULER_STATE_FIELDS})
    scheduler.__dict__.update(
        model_outputs=[torch.randn(shape, device=device) for _ in range(2)],
        timestep_list=[torch.tensor(999), torch.tensor(990)],
        last_sample=torch.randn(shape, device=device),
        lower_order_nums=2,
        this_order=2,
        _step_index=2,
        _begin_index=0,
    )
    latents, generator = torch.randn(shape, device=device), torch.Generator("cpu")
    store = ResumeStore(storage, "benchmark-run", "benchmark-item", "0" * 64, total_steps=40)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = capture_state(2, latents, scheduler, generator)
        copy_s = time.perf_counter() - started
        write_s = store.save(snapshot, [{"attempt": 1, "start_step": 0}])
        timings.append({"copy_s": round(copy_s, 4), "write_s": round(write_s, 4)})
    size = len(serialize(snapshot, spec_hash="0" * 64, attempts=[]))
    store.clear()
    return {"shape": list(shape), "bytes": size, "runs": timings}
