"""OFFLOAD=none reads the low-noise expert in the background while the high-noise steps run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from worker import experts
from worker.pipeline import generate, load_pipeline

from tests.worker.conftest import make_item, make_plan

HIGH_NOISE_STEPS = 4  # of 6 at the A14B boundary and shift (see test_presets_and_swap)


@pytest.fixture
def gate(monkeypatch):
    """Hold the background load of transformer_2 until the test opens the gate (or make it fail)."""
    opened, real_load = threading.Event(), experts.load_expert
    state = {"error": None, "names": []}

    def gated_load(model_dir, name, device):
        state["names"].append(name)
        assert opened.wait(timeout=120), "the gate was never opened"
        if state["error"] is not None:
            raise state["error"]
        return real_load(model_dir, name, device)

    monkeypatch.setattr(experts, "load_expert", gated_load)
    return opened, state


def test_high_noise_steps_run_before_the_low_noise_expert_has_loaded(tiny_model_dir, tiny_pipeline, gate):
    opened, state = gate
    loaded = load_pipeline(tiny_model_dir, plan=make_plan("none", "gpu"), device="cpu")
    # load_pipeline returned without the low-noise expert; its load starts after the first step.
    assert loaded.pipe.transformer is not None and loaded.pipe.transformer_2 is None
    assert list(loaded.deferred) == ["transformer_2"] and state["names"] == []

    seen, started = [], []

    def on_step(info) -> None:
        seen.append(info.expert)
        started.append(list(state["names"]))
        if info.index + 1 == HIGH_NOISE_STEPS:
            assert not loaded.loading["transformer_2"].done()
            opened.set()  # only now may the low-noise expert finish loading

    item = make_item(steps=6)
    frames = generate(loaded, item, on_step=on_step).frames
    assert seen == ["high-noise"] * HIGH_NOISE_STEPS + ["low-noise"] * 2
    assert started[0] == [] and started[1] == ["transformer_2"]  # not during the first step (compile)
    assert loaded.loading == {} and loaded.pipe.transformer_2 is not None
    # The same frames as the pipeline that loaded both experts before its first step.
    assert np.array_equal(frames, generate(tiny_pipeline, item).frames)
    assert loaded.pipe.text_encoder.dtype == loaded.pipe.transformer_2.dtype == torch.bfloat16


def test_a_failed_background_load_fails_each_item_that_needs_the_expert(tiny_model_dir, gate):
    opened, state = gate
    state["error"] = OSError("transformer_2/diffusion_pytorch_model.safetensors: read error")
    loaded = load_pipeline(tiny_model_dir, plan=make_plan("none", "gpu"), device="cpu")
    opened.set()
    seen = []
    for _ in range(2):  # the next item meets the same error, not a missing expert
        with pytest.raises(OSError, match="read error"):
            generate(loaded, make_item(steps=6), on_step=lambda info: seen.append(info.expert))
    assert seen == ["high-noise"] * HIGH_NOISE_STEPS * 2
    # An item that never reaches the low-noise expert does not need it.
    generate(loaded, make_item(steps=6, flow_shift=1000.0), on_step=lambda info: seen.append(info.expert))
    assert seen[-1] == "high-noise"


def test_finish_loading_waits_for_both_experts(tiny_model_dir, gate):
    opened, _ = gate
    loaded = load_pipeline(tiny_model_dir, plan=make_plan("none", "gpu"), device="cpu")
    threading.Timer(0.2, opened.set).start()
    loaded.finish_loading()
    assert loaded.loading == {}
    assert [e is not None for e in loaded.resident_experts()] == [True, True]
    assert loaded.expert("transformer_2") is loaded.pipe.transformer_2


def test_expert_bytes_is_the_size_of_the_loaded_weights(tiny_model_dir, tiny_pipeline):
    """The GPU memory reserved for a background load: every parameter in the experts' dtype."""
    loaded_bytes = sum(
        p.numel() * experts.EXPERT_DTYPE.itemsize for p in tiny_pipeline.expert("transformer_2").parameters()
    )
    assert experts.expert_bytes(tiny_model_dir, "transformer_2") == loaded_bytes
