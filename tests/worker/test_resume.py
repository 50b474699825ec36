"""Spot resume: a render interrupted after any step and resumed from its saved state gives the same frames."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from worker.pipeline import HIGH_NOISE, LOW_NOISE, SCHEDULER_STATE_FIELDS, DenoiseState, generate
from worker.resume import ResumeStore, benchmark_state_save, spec_hash
from worker.storage import LocalStorage

from tests.worker.conftest import RUN_ID, make_item
from wanbatch.errors import InterruptedRender, TransientError

ITEM = make_item(id="r", steps=6)  # at shift 12 the expert boundary falls after step 4 of 6
HASH = spec_hash(RUN_ID, "tiny", "main", None, ITEM)


@pytest.fixture(scope="module")
def uninterrupted(tiny_pipeline):
    experts: list[str] = []
    render = generate(tiny_pipeline, ITEM, on_step=lambda info: experts.append(info.expert))
    assert experts == [HIGH_NOISE] * 4 + [LOW_NOISE] * 2  # the schedule really spans the boundary
    return render.frames, experts


def interrupt_after(loaded, store: ResumeStore, stop_after: int) -> None:
    """Render until `stop_after` steps are done, saving each, then stop as a SIGTERM would."""

    def on_step(info):
        store.save(info.state(), [{"attempt": 1, "start_step": 0}])
        if info.index + 1 == stop_after:
            raise InterruptedRender("sigterm", step=stop_after)

    with pytest.raises(InterruptedRender):
        generate(loaded, ITEM, on_step=on_step)


@pytest.mark.parametrize("stop_after", [1, 2, 3, 4, 5, 6])
def test_resume_after_every_step_gives_identical_frames(tiny_pipeline, uninterrupted, tmp_path, stop_after):
    frames, experts = uninterrupted
    store = ResumeStore(LocalStorage(tmp_path, RUN_ID), RUN_ID, ITEM.id, HASH, ITEM.steps)
    interrupt_after(tiny_pipeline, store, stop_after)

    saved = store.load()  # through bytes on disk, as a retried container would see it
    assert saved is not None and saved.state.step == stop_after
    resumed_experts: list[str] = []
    render = generate(
        tiny_pipeline, ITEM, resume_from=saved.state, on_step=lambda info: resumed_experts.append(info.expert)
    )
    assert render.start_step == stop_after
    assert resumed_experts == experts[stop_after:]  # the right expert (and guidance) on each side
    assert np.array_equal(render.frames, frames)


def test_a_state_for_another_spec_is_ignored_with_a_warning(tiny_pipeline, tmp_path, caplog):
    storage = LocalStorage(tmp_path, RUN_ID)
    interrupt_after(tiny_pipeline, ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps), 2)
    other = spec_hash(RUN_ID, "tiny", "main", None, make_item(id="r", steps=6, seed=8))
    with caplog.at_level(logging.WARNING):
        assert ResumeStore(storage, RUN_ID, ITEM.id, other, ITEM.steps).load() is None
    assert "different spec" in caplog.text


@pytest.mark.parametrize(
    "damage", [lambda b: b[: len(b) // 2], lambda b: b"not a state", lambda b: b[:100] + bytes(50) + b[150:]]
)
def test_a_corrupt_state_is_ignored_never_trusted(tiny_pipeline, tmp_path, caplog, damage):
    storage = LocalStorage(tmp_path, RUN_ID)
    store = ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps)
    interrupt_after(tiny_pipeline, store, 3)
    storage.write(store.key, damage(storage.read(store.key)))
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    assert "ignoring saved state" in caplog.text


def test_a_state_with_non_finite_latents_is_rejected(tmp_path):
    store = ResumeStore(LocalStorage(tmp_path, RUN_ID), RUN_ID, ITEM.id, HASH, ITEM.steps)
    bad = DenoiseState(
        step=2,
        latents=torch.full((1, 16, 2, 30, 52), float("nan")),
        scheduler={name: None for name in SCHEDULER_STATE_FIELDS},
        generator=torch.Generator().get_state(),
    )
    store.save(bad, [])
    assert store.load() is None


def test_benchmark_state_save_times_a_720p_state(tmp_path):
    result = benchmark_state_save(LocalStorage(tmp_path, "benchmark-run"), shape=(1, 16, 3, 8, 8), repeats=2)
    assert result["shape"] == [1, 16, 3, 8, 8] and len(result["runs"]) == 2
    assert result["bytes"] > 4 * 16 * 3 * 8 * 8 * 4  # four fp32 latent-sized tensors
    assert not (tmp_path / "resume" / "benchmark-item" / "state.pt").exists()  # cleaned up


class GatedStorage(LocalStorage):
    """Local storage whose writes wait for `gate` (a PUT that is still uploading) or raise `error`."""

    def __init__(self, root, run_id, error: Exception | None = None):
        super().__init__(root, run_id)
        self.gate, self.error = threading.Event(), error

    def write(self, key, data, content_type="application/octet-stream"):
        assert self.gate.wait(10), "the test never opened the gate"
        if self.error is not None:
            raise self.error
        super().write(key, data, content_type)


def captured_state(step: int) -> DenoiseState:
    scheduler = {name: None for name in SCHEDULER_STATE_FIELDS}
    return DenoiseState(step, torch.randn(1, 16, 2, 4, 4), scheduler, torch.Generator().get_state())


def test_a_background_save_returns_before_the_write_and_flush_waits_for_it(tmp_path):
    storage = GatedStorage(tmp_path, RUN_ID)
    store = ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps)
    state = captured_state(3)
    store.save_in_background(state, [{"attempt": 1}])  # returns with the write still held at the gate
    assert store.load() is None
    storage.gate.set()
    store.flush()
    saved = store.load()
    assert saved is not None and saved.state.step == 3 and saved.attempts == [{"attempt": 1}]
    assert torch.equal(saved.state.latents, state.latents)
    store.close()


def test_the_next_background_save_waits_for_the_one_in_flight_and_the_newest_state_wins(tmp_path):
    storage = GatedStorage(tmp_path, RUN_ID)
    store = ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps)
    store.save_in_background(captured_state(1), [])
    second = threading.Thread(target=store.save_in_background, args=(captured_state(2), []))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # one write at a time: the second save waits for the first
    storage.gate.set()
    second.join(10)
    store.close()
    assert store.load().state.step == 2


def test_a_failed_background_write_is_raised_by_flush_and_only_logged_by_close(tmp_path, caplog):
    storage = GatedStorage(tmp_path, RUN_ID, error=TransientError("SlowDown"))
    storage.gate.set()
    store = ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps)
    store.save_in_background(captured_state(2), [])
    with pytest.raises(TransientError):
        store.flush()
    store.save_in_background(captured_state(3), [])
    with caplog.at_level(logging.WARNING):
        store.close()
    assert "SlowDown" in caplog.text and store.load() is None


def test_clear_waits_for_the_write_in_flight_so_no_state_comes_back(tmp_path):
    storage = GatedStorage(tmp_path, RUN_ID)
    store = ResumeStore(storage, RUN_ID, ITEM.id, HASH, ITEM.steps)
    store.save_in_background(captured_state(6), [])
    threading.Timer(0.2, storage.gate.set).start()
    store.clear()  # without waiting, the delete would run first and the write would recreate the state
    store.close()
    assert store.load() is None and not (tmp_path / "resume" / ITEM.id / "state.pt").exists()
