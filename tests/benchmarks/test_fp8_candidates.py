"""The benchmark's SageAttention custom op (benchmarks.fp8_candidates), on the CPU with a stand-in kernel."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from benchmarks import dit, fp8_candidates


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
