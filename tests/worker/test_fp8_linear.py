"""QUANTIZATION=fp8's linear layers (worker.fp8_linear) and the benchmark's Sage custom op, on the CPU."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from worker import fp8_linear, presets
from worker.fp8_linear import Float8RowwiseLinear, quantize_rows

from benchmarks import dit, fp8_candidates


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


def test_rows_quantize_to_e4m3_within_its_precision():
    t = torch.randn(8, 64) * torch.logspace(-3, 3, 8).unsqueeze(1)  # rows of very different magnitude
    values, scale = quantize_rows(t)
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


def test_fp8_linear_traces_in_one_graph():
    linear = Float8RowwiseLinear(torch.nn.Linear(64, 32).to(torch.bfloat16))
    compiled = torch.compile(linear, fullgraph=True, backend="aot_eager")  # a graph break would raise
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.no_grad():  # inference, as the worker runs it (_scaled_mm has no backward)
        assert torch.equal(compiled(x), linear(x))


def test_apply_fp8_replaces_exactly_the_preset_targets():
    model = dit.build_ours("cpu", tiny=True)
    inputs = dit.make_inputs("480p", 1, "cpu", tiny=True)
    with torch.no_grad():
        ref = dit.forward_ours(model, inputs)
    wanted = [name for name, module in model.named_modules() if presets.is_fp8_target(module, name)]
    assert presets.apply_fp8(model) == len(wanted) > 0
    swapped = {name for name, module in model.named_modules() if isinstance(module, Float8RowwiseLinear)}
    assert swapped == set(wanted)
    assert isinstance(model.proj_out, torch.nn.Linear)  # outside the blocks: stays bf16
    with torch.no_grad():
        assert _rel_l2(dit.forward_ours(model, inputs), ref) < 0.2


def test_fp8_blocks_compile_whole_as_compile_auto_does():
    # QUANTIZATION=fp8 no longer turns COMPILE=auto off: the FP8 blocks must trace without a graph break.
    model = dit.build_ours("cpu", tiny=True)
    inputs = dit.make_inputs("480p", 1, "cpu", tiny=True)
    presets.apply_fp8(model)
    with torch.no_grad():
        eager = dit.forward_ours(model, inputs)
        model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")  # a graph break would raise
        compiled = dit.forward_ours(model, inputs)
    assert torch.equal(compiled, eager)


@pytest.fixture
def fake_sage(monkeypatch):
    """A stand-in `sageattention` (exact SDPA, NHD layout) recording the calls it gets."""
    calls = []

    def sageattn(q, k, v, tensor_layout, is_causal):
        assert tensor_layout == "NHD" and not is_causal
        calls.append((q.shape, k.shape))
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    return calls


def test_sage_op_stays_inside_a_fullgraph_compiled_block(fake_sage):
    model = dit.build_ours("cpu", tiny=True)
    inputs = dit.make_inputs("480p", 1, "cpu", tiny=True)
    with torch.no_grad():
        ref = dit.forward_ours(model, inputs)
        undo = fp8_candidates.route_attention_to_sage()
        try:
            model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
            out = dit.forward_ours(model, inputs)
        finally:
            undo()
    assert len(fake_sage) == 2 * len(model.blocks)  # self- and cross-attention of every block
    assert _rel_l2(out, ref) < 1e-2  # the stand-in is exact attention
    from diffusers.models.transformers import transformer_wan

    assert transformer_wan.dispatch_attention_fn.__name__ == "dispatch_attention_fn"  # undone
