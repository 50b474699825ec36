"""`OFFLOAD=auto` and `TEXT_ENCODER_DEVICE=auto` are decided from memory sizes alone."""

from __future__ import annotations

import pytest
from worker.offload import GiB, choose_plan

HOST_128 = 128 * GiB


def plan_for(gpu_gib: float | None, width=1280, height=720, frames=81, host=HOST_128, **kw):
    gpu = None if gpu_gib is None else int(gpu_gib * GiB)
    sizes = dict(width=width, height=height, frames=frames)
    return choose_plan(gpu_total_bytes=gpu, host_ram_bytes=host, **sizes, **kw)


def test_cpu_only_runs_everything_on_the_cpu():
    plan = plan_for(None)
    assert (plan.offload, plan.text_encoder_device, plan.vae_tiling) == ("none", "cpu", False)


def test_720p_on_a_48gb_l40s_swaps_one_expert_at_a_time_without_tiling():
    plan = plan_for(44.5)  # an L40S reports about 44.5 GiB
    assert (plan.offload, plan.text_encoder_device, plan.vae_tiling) == ("model", "gpu", False)


def test_a_141gb_h200_keeps_everything_resident():
    plan = plan_for(139)
    assert (plan.offload, plan.text_encoder_device, plan.vae_tiling) == ("none", "gpu", False)


def test_a_24gb_card_streams_blocks_and_a_12gb_card_streams_layers_and_tiles_decode():
    assert plan_for(24).offload == "group"
    small = plan_for(12, host=32 * GiB)
    assert small.offload == "sequential"
    assert small.vae_tiling is True


def test_everything_resident_tiles_decode_when_the_rest_of_the_card_is_too_small():
    plan = plan_for(72, offload="none", text_encoder_device="gpu")
    assert plan.vae_tiling is True
    assert plan_for(72, width=832, height=480, offload="none", text_encoder_device="cpu").vae_tiling is False


def test_explicit_choices_are_kept():
    plan = plan_for(139, offload="sequential", text_encoder_device="cpu")
    assert (plan.offload, plan.text_encoder_device) == ("sequential", "cpu")


@pytest.mark.parametrize("field", ["offload", "text_encoder_device"])
def test_unknown_modes_are_rejected_by_name(field):
    with pytest.raises(ValueError, match=field.upper()):
        plan_for(48, **{field: "turbo"})
