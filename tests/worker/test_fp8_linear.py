"""QUANTIZATION=fp8's linear layers (worker.fp8_linear), on the CPU with the tiny Wan2.2-shaped expert."""

from __future__ import annotations

import torch
from worker import fp8_linear, presets
from worker.experts import load_expert
from worker.fp8_linear import Float8RowwiseLinear, quantize_e4m3


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


def _forward(expert: torch.nn.Module) -> torch.Tensor:
    """One forward of the tiny expert on fixed random inputs (latents 2 x 8 x 8, 16 text tokens)."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, expert.config.in_channels, 2, 8, 8, generator=gen).to(torch.bfloat16)
    context = torch.randn(1, 16, expert.config.text_dim, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        return expert(
            hidden_states=latents,
            timestep=torch.tensor([999.0]),
            encoder_hidden_states=context,
            return_dict=False,
        )[0]


def test_rows_quantize_to_e4m3_within_its_precision():
    t = torch.randn(8, 64) * torch.logspace(-3, 3, 8).unsqueeze(1)  # rows of very different magnitude
    values, scale = quantize_e4m3(t)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (8, 1)
    assert float(values.float().abs().amax()) == fp8_linear.E4M3_MAX  # each row's amax maps to 448
    assert _rel_l2(values.float() * scale, t) < 0.05  # 3 mantissa bits: ~2-4 % per element


def test_fp8_linear_matches_the_bf16_layer_within_fp8_error():
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96, bias=True).to(torch.bfloat16)
    x = torch.randn(2, 7, 128, dtype=torch.bfloat16)  # leading dims kept, token count not a multiple of 16
    fp8 = Float8RowwiseLinear(linear)
    out = fp8(x)
    assert out.shape == (2, 7, 96) and out.dtype == torch.bfloat16
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 96)
    assert _rel_l2(out, linear(x)) < 0.06
    # The bias is applied: without it the result moves by the bias (up to the outputs' bf16 rounding).
    fp8.bias = None
    assert _rel_l2(out - fp8(x), linear.bias.expand_as(out)) < 0.05


def test_swap_passes_fast_accumulation_on_and_the_worker_leaves_it_off():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16)).to(torch.bfloat16)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = model(x)
        is_linear = lambda module, _: isinstance(module, torch.nn.Linear)  # noqa: E731
        assert fp8_linear.swap_fp8_linears(model, is_linear, fast_accum=True) == 2
        assert all(layer.fast_accum for layer in model)
        assert _rel_l2(model(x), ref) < 0.1
    assert not Float8RowwiseLinear(torch.nn.Linear(8, 8).to(torch.bfloat16)).fast_accum


def test_fp8_linear_traces_in_one_graph():
    linear = Float8RowwiseLinear(torch.nn.Linear(64, 32).to(torch.bfloat16))
    compiled = torch.compile(linear, fullgraph=True, backend="aot_eager")  # a graph break would raise
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.no_grad():  # inference, as the worker runs it (_scaled_mm has no backward)
        assert torch.equal(compiled(x), linear(x))


def test_apply_fp8_replaces_exactly_the_preset_targets(tiny_model_dir):
    expert = load_expert(tiny_model_dir, "transformer", "cpu")
    ref = _forward(expert)
    wanted = [name for name, module in expert.named_modules() if presets.is_fp8_target(module, name)]
    assert presets.apply_fp8(expert) == len(wanted) > 0
    swapped = {name for name, module in expert.named_modules() if isinstance(module, Float8RowwiseLinear)}
    assert swapped == set(wanted)
    assert isinstance(expert.proj_out, torch.nn.Linear)  # outside the blocks: stays bf16
    assert _rel_l2(_forward(expert), ref) < 0.2


def test_fp8_blocks_compile_whole_as_compile_auto_does(tiny_model_dir):
    # QUANTIZATION=fp8 no longer turns COMPILE=auto off: the FP8 blocks must trace without a graph break.
    expert = load_expert(tiny_model_dir, "transformer", "cpu")
    presets.apply_fp8(expert)
    eager = _forward(expert)
    expert.compile_repeated_blocks(fullgraph=True, backend="aot_eager")  # a graph break would raise
    assert torch.equal(_forward(expert), eager)
