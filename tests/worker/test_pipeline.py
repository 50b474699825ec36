"""Our denoising loop over WanPipeline's components equals WanPipeline.__call__ frame for frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from worker.pipeline import HIGH_NOISE, LOW_NOISE, generate, make_scheduler

from tests.worker.conftest import make_item


def test_our_loop_equals_wan_pipeline_call(tiny_pipeline):
    item = make_item(steps=6)
    experts: list[str] = []
    ours = generate(tiny_pipeline, item, on_step=lambda info: experts.append(info.expert))

    pipe = tiny_pipeline.pipe
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(pipe, item.flow_shift)
    try:
        reference = pipe(
            prompt=item.prompt,
            negative_prompt=item.negative_prompt,
            height=item.height,
            width=item.width,
            num_frames=item.num_frames,
            num_inference_steps=item.steps,
            guidance_scale=item.guidance_scale,
            guidance_scale_2=item.guidance_scale_2,
            generator=torch.Generator("cpu").manual_seed(item.seed),
            output_type="np",
        ).frames[0]
    finally:
        pipe.scheduler = original

    assert ours.frames.shape == (5, 480, 832, 3)
    assert np.array_equal(ours.frames, reference)
    # Both experts ran: 4 high-noise steps above the 0.875 boundary at shift 12, then 2 low-noise ones.
    assert experts == [HIGH_NOISE] * 4 + [LOW_NOISE] * 2


def test_same_seed_gives_identical_frames_and_another_seed_does_not(tiny_pipeline):
    first = generate(tiny_pipeline, make_item(steps=2)).frames
    again = generate(tiny_pipeline, make_item(steps=2)).frames
    other = generate(tiny_pipeline, make_item(steps=2, seed=8)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_items_flow_shift_reaches_the_scheduler(tiny_pipeline):
    render = generate(tiny_pipeline, make_item(steps=2, flow_shift=5.0), output_type="latent")
    assert render.scheduler_config["flow_shift"] == 5.0
    # The sigmas it steps through are the shifted ones: shift * s / (1 + (shift - 1) * s).
    scheduler = make_scheduler(tiny_pipeline.pipe, 5.0)
    scheduler.set_timesteps(4)
    s = np.linspace(1.0, 1.0 / 1000, 4 + 1)[:-1]  # unshifted flow sigmas, as UniPC's linspace
    assert np.allclose(scheduler.sigmas[:-1].numpy(), 5.0 * s / (1 + 4.0 * s), atol=1e-3)
    assert not torch.equal(scheduler.sigmas, _sigmas(tiny_pipeline, 12.0, 4))


def _sigmas(loaded, shift: float, steps: int) -> torch.Tensor:
    scheduler = make_scheduler(loaded.pipe, shift)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas


def test_sizes_that_do_not_patchify_are_rejected(tiny_pipeline):
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(tiny_pipeline, make_item(width=840))


def test_components_load_in_the_documented_dtypes(tiny_pipeline):
    pipe = tiny_pipeline.pipe
    assert pipe.transformer.dtype == pipe.transformer_2.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32
    assert tiny_pipeline.boundary_ratio == 0.875
