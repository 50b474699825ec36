"""OFFLOAD=swap (one expert at a time from disk) and the fast presets (FP8, TaylorSeer step cache)."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from worker import presets
from worker.offload import GiB, choose_plan
from worker.pipeline import generate, load_pipeline, pick_compile
from worker.settings import Settings

from tests.worker.conftest import make_item, make_plan


@pytest.fixture(scope="module")
def swap_pipeline(tiny_model_dir):
    return load_pipeline(tiny_model_dir, plan=make_plan("swap"), device="cpu")


def test_swapped_experts_give_the_same_frames_as_resident_ones(tiny_pipeline, swap_pipeline):
    item = make_item(steps=6)  # 4 high-noise steps, then 2 low-noise ones
    resident = generate(tiny_pipeline, item).frames
    events = []
    swapped = generate(swap_pipeline, item, on_step=lambda _: events.append(swap_pipeline.swap.name)).frames
    assert np.array_equal(swapped, resident)
    assert events == ["transformer"] * 4 + ["transformer_2"] * 2
    # After the loop the expert is dropped (the decode gets its memory), and the pipeline holds none.
    assert swap_pipeline.swap.name is None
    assert swap_pipeline.pipe.transformer is None and swap_pipeline.pipe.transformer_2 is None


def test_a_second_item_swaps_the_high_noise_expert_back_in(swap_pipeline):
    before = swap_pipeline.swap.loads
    generate(swap_pipeline, make_item(steps=6, seed=8))
    assert swap_pipeline.swap.loads == before + 2


def test_the_old_expert_is_freed_before_the_next_one_loads(swap_pipeline):
    """On a 48 GB card two experts do not fit: nothing may keep the first alive while the second loads."""
    swap = swap_pipeline.swap
    prepare, alive_at_load = swap.prepare, []
    previous: list[weakref.ref] = []

    def watch(expert):
        alive_at_load.append([ref() is not None for ref in previous])
        previous.append(weakref.ref(expert))
        prepare(expert)

    swap.prepare = watch
    try:
        generate(swap_pipeline, make_item(steps=6, seed=9))
    finally:
        swap.prepare = prepare
    assert alive_at_load == [[], [False]]


def test_auto_picks_swap_when_the_host_cannot_hold_both_experts():
    common = dict(gpu_total_bytes=44 * GiB, width=1280, height=720, frames=81)
    small_host = choose_plan(host_ram_bytes=62 * GiB, **common)  # g6e.2xlarge: 64 GiB
    big_host = choose_plan(host_ram_bytes=124 * GiB, **common)  # g6e.4xlarge: 128 GiB
    assert (small_host.offload, small_host.text_encoder_device) == ("swap", "cpu")
    assert not small_host.vae_tiling  # the expert leaves the GPU before the decode
    assert (big_host.offload, big_host.text_encoder_device) == ("model", "gpu")


def test_the_presets_are_off_by_default_and_validated():
    settings = Settings.from_env({"SPEC_URI": "spec.json"})
    assert (settings.quantization, settings.step_cache) == ("none", "none")
    chosen = Settings.from_env({"SPEC_URI": "spec.json", "QUANTIZATION": "fp8", "STEP_CACHE": "taylorseer"})
    assert (chosen.quantization, chosen.step_cache) == ("fp8", "taylorseer")
    with pytest.raises(Exception, match="QUANTIZATION must be one of none, fp8"):
        Settings.from_env({"SPEC_URI": "spec.json", "QUANTIZATION": "int4"})


def test_fp8_is_refused_on_a_cpu_before_anything_loads(tiny_model_dir):
    with pytest.raises(ValueError, match="QUANTIZATION=fp8 needs an NVIDIA GPU"):
        load_pipeline(tiny_model_dir, plan=make_plan("none"), device="cpu", quantization="fp8")


def test_fp8_targets_only_the_blocks_linear_layers(tiny_pipeline):
    expert = tiny_pipeline.pipe.transformer
    targets = [name for name, module in expert.named_modules() if presets.is_fp8_target(module, name)]
    linears = [name for name, module in expert.named_modules() if isinstance(module, torch.nn.Linear)]
    assert targets and all(name.startswith("blocks.") for name in targets)
    # Embeddings and the output projection stay in bf16.
    assert "proj_out" in linears and "proj_out" not in targets
    assert any(name.startswith("condition_embedder") for name in linears)
    assert not any(name.startswith("condition_embedder") for name in targets)


def test_taylorseer_runs_the_network_on_18_of_40_steps_at_the_a14b_split():
    # 40 steps at shift 12, boundary 0.875: 26 high-noise steps, 14 low-noise ones (BENCHMARKS.md e2e runs).
    assert presets.full_forward_steps(26) + presets.full_forward_steps(14) == 18
    assert presets.full_forward_steps(3) == 3  # the warm-up steps always run


def test_step_cache_skips_blocks_and_changes_the_frames_a_little(tiny_model_dir, tiny_pipeline):
    plan = make_plan("none", "gpu")
    cached = load_pipeline(tiny_model_dir, plan=plan, device="cpu", step_cache="taylorseer")
    ffn_calls, experts = [], []
    # The FFN inside block 0 runs only when the block really computes (a cached step skips the block).
    handle = cached.pipe.transformer.blocks[0].ffn.register_forward_pre_hook(lambda m, a: ffn_calls.append(1))
    item = make_item(steps=12)
    try:
        fast = generate(cached, item, on_step=lambda info: experts.append(info.expert)).frames
    finally:
        handle.remove()
    high_steps = experts.count(experts[0])
    assert high_steps > presets.TAYLORSEER_WARMUP_STEPS + 1
    assert len(ffn_calls) == 2 * presets.full_forward_steps(high_steps) < 2 * high_steps  # cond + uncond
    lossless = generate(tiny_pipeline, item).frames
    assert not np.array_equal(fast, lossless)
    assert np.abs(fast - lossless).mean() < 0.2
    # Rendering the item again starts from a reset cache: the same frames.
    assert np.array_equal(generate(cached, item).frames, fast)


def test_compile_stays_off_under_a_step_cache():
    assert pick_compile("regional", "cuda", make_plan("none", "gpu"), step_cache="taylorseer") == "none"
    assert pick_compile("regional", "cuda", make_plan("none", "gpu")) == "regional"


def test_compile_caches_go_beside_the_model_unless_set(monkeypatch, tmp_path):
    from worker.pipeline import configure_compile_cache

    fa4_cache = ("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED")
    for name in ("TORCHINDUCTOR_CACHE_DIR", *fa4_cache):
        monkeypatch.setenv(name, "recorded")  # so the test's end restores what was there before
        monkeypatch.delenv(name)
    assert configure_compile_cache(tmp_path / "efs", tmp_path / "nvme") == tmp_path / "nvme" / "torch-compile"
    # FA4's kernel cache is switched on beside torch's on the NVMe tier...
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "nvme" / "flash-attn-cute")
    for name in ("TORCHINDUCTOR_CACHE_DIR", *fa4_cache):
        monkeypatch.delenv(name)
    assert configure_compile_cache(tmp_path / "efs", None) == tmp_path / "efs" / "torch-compile"
    assert not any(name in os.environ for name in fa4_cache)  # ...and left off on EFS alone
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert configure_compile_cache(tmp_path / "efs", None) == Path("/elsewhere")


def test_the_weight_mirror_comes_in_through_settings():
    assert Settings.from_env({"SPEC_URI": "spec.json"}).s3_mirror == ""
    mirrored = Settings.from_env({"SPEC_URI": "spec.json", "MODEL_S3_MIRROR": " s3://weights/wan/ "})
    assert mirrored.s3_mirror == "s3://weights/wan/"
