"""The benchmark's attention custom ops (benchmarks.fp8_candidates), on the CPU with stand-in kernels."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from benchmarks import common, dit, fp8_candidates


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


@pytest.fixture
def fake_sage(monkeypatch):
    """A stand-in `sageattention` (exact SDPA, NHD layout) recording the calls it gets."""
    calls = []

    def sageattn(q, k, v, tensor_layout, is_causal):
        assert tensor_layout == "NHD" and not is_causal
        calls.append((q.shape, k.shape))
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)

    module = types.ModuleType("sageattention")
    # A spec, since diffusers asks importlib.util.find_spec whether sageattention is there.
    module.__spec__ = importlib.machinery.ModuleSpec("sageattention", None)
    module.sageattn = sageattn
    monkeypatch.setitem(sys.modules, "sageattention", module)
    return calls


def _routed_compiled_forward(kernel: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny DiT, its output with attention routed to `kernel` in fullgraph-compiled blocks, eager's."""
    model = dit.build_ours("cpu", tiny=True)
    inputs = dit.make_inputs("480p", 1, "cpu", tiny=True)
    with torch.no_grad():
        ref = dit.forward_ours(model, inputs)
        undo = fp8_candidates.route_attention(kernel)
        try:
            model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
            out = dit.forward_ours(model, inputs)
        finally:
            undo()
    return model, out, ref


def test_sage_op_stays_inside_a_fullgraph_compiled_block(fake_sage):
    model, out, ref = _routed_compiled_forward("sage")
    assert len(fake_sage) == 2 * len(model.blocks)  # self- and cross-attention of every block
    assert _rel_l2(out, ref) < 1e-2  # the stand-in is exact attention
    from diffusers.models.transformers import transformer_wan

    assert transformer_wan.dispatch_attention_fn.__name__ == "dispatch_attention_fn"  # undone


@pytest.fixture
def fake_cudnn(monkeypatch):
    """A stand-in for cuDNN's FP8 graph: exact attention on the dequantized inputs, O in e4m3 on V's scale."""
    plans = []

    def build(query, key, value):
        plans.append((tuple(query.shape), tuple(key.shape)))

        def run(query, key, value, descale_q, descale_k, descale_v, out):
            q, k, v = (t.float() * s for t, s in ((query, descale_q), (key, descale_k), (value, descale_v)))
            out.copy_((F.scaled_dot_product_attention(q, k, v) / descale_v).to(out.dtype))

        return run

    monkeypatch.setattr(fp8_candidates, "_build_cudnn_fp8_plan", build)
    monkeypatch.setattr(fp8_candidates, "_CUDNN_PLANS", {})
    return plans


def test_quantize_per_tensor_puts_the_largest_magnitude_on_e4m3s_limit():
    x = torch.randn(2, 3, 64, 16) * 7
    x8, descale = fp8_candidates.quantize_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert float(x8.float().abs().max()) == fp8_candidates.E4M3_MAX
    assert _rel_l2(x8.float() * descale, x) < 0.05  # 3 mantissa bits


def test_cudnn_fp8_attention_compiles_inside_the_blocks_within_fp8_error(fake_cudnn):
    _, out, ref = _routed_compiled_forward("cudnn_fp8")
    # One plan per shape, (batch, heads, length, head_dim): self-attention, and cross-attention to the text.
    seq_len = dit.seq_len("480p", tiny=True)
    assert sorted(key[2] for _, key in fake_cudnn) == sorted([seq_len, common.TEXT_LEN])
    assert {query[2] for query, _ in fake_cudnn} == {seq_len}
    assert 0 < _rel_l2(out, ref) < 0.1  # e4m3 Q, K, V and O: close, not exact


@pytest.fixture
def fake_fa3(monkeypatch):
    """A stand-in `flash_attn_3` that checks FA3's FP8 contract (e4m3 (batch, length, heads, head_dim),
    float32 (batch, heads) descales) and returns exact attention on the dequantized inputs, in bf16 as FA3
    does."""
    calls = []

    def flash_attn_func(q, k, v, q_descale, k_descale, v_descale):
        dequantized = []
        for t, descale in ((q, q_descale), (k, k_descale), (v, v_descale)):
            assert t.dtype == torch.float8_e4m3fn
            assert descale.dtype == torch.float32 and descale.shape == (t.shape[0], t.shape[2])
            dequantized.append((t.float() * descale[:, None, :, None]).transpose(1, 2))
        calls.append((q.shape, k.shape))
        return F.scaled_dot_product_attention(*dequantized).transpose(1, 2).to(torch.bfloat16)

    package = types.ModuleType("flash_attn_3")
    package.__spec__ = importlib.machinery.ModuleSpec("flash_attn_3", None, is_package=True)
    package.__path__ = []
    interface = types.ModuleType("flash_attn_3.flash_attn_interface")
    interface.flash_attn_func = flash_attn_func
    package.flash_attn_interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn_3", package)
    monkeypatch.setitem(sys.modules, "flash_attn_3.flash_attn_interface", interface)
    return calls


def test_quantize_per_head_gives_each_head_its_own_scale():
    x = torch.randn(2, 64, 3, 16)
    x[:, :, 1] *= 1e6  # one loud head
    x8, descale = fp8_candidates.quantize_per_head(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.dtype == torch.float32 and descale.shape == (2, 3)
    assert torch.equal(x8.float().abs().amax(dim=(1, 3)), torch.full((2, 3), fp8_candidates.E4M3_MAX))
    quiet = x[:, :, 0]
    assert _rel_l2(x8[:, :, 0].float() * descale[:, None, :1], quiet) < 0.05
    # One scale for the whole tensor would push the quiet head below e4m3's smallest values.
    t8, tensor_descale = fp8_candidates.quantize_per_tensor(x)
    assert _rel_l2(t8[:, :, 0].float() * tensor_descale[0, 0], quiet) > 0.5


def test_fa3_fp8_attention_compiles_inside_the_blocks_within_fp8_error(fake_fa3):
    model, out, ref = _routed_compiled_forward("fa3_fp8")
    assert len(fake_fa3) == 2 * len(model.blocks)  # self- and cross-attention of every block
    assert 0 < _rel_l2(out, ref) < 0.1  # e4m3 Q, K, V: close, not exact


def test_fa3_fp8_smooths_keys_so_a_shared_offset_costs_no_accuracy(fake_fa3):
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 256, 2, 32, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    offset_key = key + 40  # the same vector added to every key: softmax does not see it
    exact = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value))).transpose(1, 2)
    out = fp8_candidates.fa3_fp8_sdpa(query, offset_key, value)
    assert out.dtype == torch.bfloat16 and out.shape == query.shape
    assert _rel_l2(out, exact) < 0.1
    # Without the smoothing, e4m3 spends its range on the offset and the scores lose their differences.
    unsmoothed = fp8_candidates.fa3_fp8_attention(
        *(values for values, _ in map(fp8_candidates.quantize_per_head, (query, offset_key, value))),
        *(descale for _, descale in map(fp8_candidates.quantize_per_head, (query, offset_key, value))),
    )
    assert _rel_l2(unsmoothed, exact) > 2 * _rel_l2(out, exact)
