"""COMPILE (regional compile by default on CUDA, eager fallback under `auto`) and the simulated-card hook."""

from __future__ import annotations

import pytest
import torch
from worker.offload import GiB, choose_plan, gpu_memory_fraction
from worker.pipeline import COMPILE_MODES, LoadedPipeline, pick_compile, run_expert, uncompile
from worker.settings import Settings

from tests.worker.conftest import make_plan
from wanbatch.errors import SpecError

NONE = make_plan("none", "gpu")


@pytest.mark.parametrize(
    ("requested", "device", "offload", "expected"),
    [
        ("auto", "cuda", "none", "regional"),
        ("auto", "cuda:0", "model", "regional"),
        ("regional", "cuda", "none", "regional"),
        ("none", "cuda", "none", "none"),
        ("auto", "cpu", "none", "none"),  # CPU stays eager
        ("regional", "cpu", "none", "none"),
        ("auto", "cuda", "group", "none"),  # streamed blocks cannot be traced whole
        ("auto", "cuda", "sequential", "none"),
    ],
)
def test_pick_compile(requested, device, offload, expected):
    plan = make_plan(offload, "gpu")
    assert pick_compile(requested, device, plan) == expected


def test_pick_compile_rejects_unknown_modes():
    with pytest.raises(ValueError, match="COMPILE must be one of auto, none, regional"):
        pick_compile("max-autotune", "cuda", NONE)


def test_settings_read_compile_and_default_to_auto():
    assert Settings.from_env({"SPEC_URI": "/tmp/spec.json"}).compile_mode == "auto"
    assert Settings.from_env({"SPEC_URI": "/tmp/spec.json", "COMPILE": "none"}).compile_mode == "none"
    with pytest.raises(SpecError, match="COMPILE"):
        Settings.from_env({"SPEC_URI": "/tmp/spec.json", "COMPILE": "yes"})
    assert set(COMPILE_MODES) == {"auto", "none", "regional"}


class _Expert(torch.nn.Module):
    """Stands in for an expert whose compiled call fails (as inductor does on an unsupported GPU)."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Linear(2, 2)
        self.block._compiled_call_impl = self._broken
        self.calls = 0

    @staticmethod
    def _broken(*args, **kwargs):
        raise RuntimeError("inductor: no kernel for this GPU")

    def forward(self, hidden_states, return_dict=False):
        self.calls += 1
        return (self.block(hidden_states),)


def _loaded(expert, *, fallback: bool) -> LoadedPipeline:
    pipe = type("Pipe", (), {"transformer": expert, "transformer_2": None})()
    return LoadedPipeline(pipe, "cuda", NONE, "native", compile_mode="regional", compile_fallback=fallback)


def test_auto_falls_back_to_eager_when_the_first_compiled_call_fails():
    expert = _Expert()
    loaded = _loaded(expert, fallback=True)
    x = torch.ones(1, 2)
    out = run_expert(loaded, expert, hidden_states=x)
    assert torch.equal(out, expert.block(x))
    assert loaded.compile_mode == "none"  # what the manifest records
    assert "no kernel" in loaded.compile_error
    assert expert.block._compiled_call_impl is None


def test_explicit_regional_does_not_hide_a_compile_failure():
    expert = _Expert()
    with pytest.raises(RuntimeError, match="no kernel"):
        run_expert(_loaded(expert, fallback=False), expert, hidden_states=torch.ones(1, 2))


def test_uncompile_clears_every_compiled_block():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    for block in model:
        block.compile()
    uncompile(model)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


def test_memory_fraction_is_validated(monkeypatch):
    assert gpu_memory_fraction({}) is None
    assert gpu_memory_fraction({"WANBATCH_GPU_MEMORY_FRACTION": "0.3176"}) == pytest.approx(0.3176)
    for bad in ("0", "1.5", "half"):
        with pytest.raises(ValueError, match="WANBATCH_GPU_MEMORY_FRACTION"):
            gpu_memory_fraction({"WANBATCH_GPU_MEMORY_FRACTION": bad})


def test_auto_plans_for_the_simulated_card(monkeypatch):
    h200 = int(139.8 * GiB)
    kwargs = dict(gpu_total_bytes=h200, host_ram_bytes=128 * GiB, width=1280, height=720, frames=81)
    assert choose_plan(**kwargs).offload == "none"
    monkeypatch.setenv("WANBATCH_GPU_MEMORY_FRACTION", "0.3176")  # an L40S's 44.4 GiB
    assert choose_plan(**kwargs).offload == "model"
