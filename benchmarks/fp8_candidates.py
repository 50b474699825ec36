"""Fast-preset pieces that compile with the transformer blocks: candidates for worker.presets, measured by
benchmarks.presets (`--fp8-impl scaled_mm`, and `fp8_sage`) before anything moves into the worker.

Why: on the H200 (torch 2.11, torchao 0.18) the worker's torchao FP8 gained nothing eager and did not finish
compiling in 4.5 min, and SageAttention's kernels broke fullgraph compile (they call torch.cuda.set_device),
so its FP8 step ran eager (BENCHMARKS.md, "Fast presets").

- `Float8RowwiseLinear`: the computation of torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())`
  in plain ops: e4m3 weights with one scale per output row (quantized once), e4m3 activations with one scale
  per token (each call), one `torch._scaled_mm` with a bf16 result. Inductor fuses the activation scaling
  into the block's own kernels.
- `sage_attention`: SageAttention 2 as a `torch.library` custom op, opaque to dynamo, so a compiled block
  keeps it in its graph; `route_attention_to_sage` points the Wan blocks' attention calls at it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
SAGE_OP = "wanbench::sage_attention"


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and each row's fp32 scale (row amax / 448), so that `t ~= values * scale`."""
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Float8RowwiseLinear(torch.nn.Module):
    """An nn.Linear with e4m3 weights and activations, per-row scales, one `_scaled_mm` per call."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in); passed transposed: the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = quantize_rows(x.reshape(-1, self.in_features))
        weight, weight_scale = self.weight.t(), self.weight_scale
        out = torch._scaled_mm(
            values, weight, scale_a=scale, scale_b=weight_scale, bias=self.bias, out_dtype=x.dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)


def swap_fp8_linears(model: torch.nn.Module, is_target: Callable[[torch.nn.Module, str], bool]) -> int:
    """Replace every linear layer `is_target` accepts (worker.presets.is_fp8_target) in place; the count."""
    targets = [(name, module) for name, module in model.named_modules() if is_target(module, name)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Float8RowwiseLinear(module))
    return len(targets)


@torch.library.custom_op(SAGE_OP, mutates_args=())
def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SageAttention 2 (`sageattn`, INT8 QK / FP8 PV on sm90) on (batch, length, heads, head_dim) tensors."""
    from sageattention import sageattn

    return sageattn(query, key, value, tensor_layout="NHD", is_causal=False)


@sage_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(query)


def route_attention_to_sage() -> Callable[[], None]:
    """Send the Wan blocks' attention (diffusers' dispatch, no mask) through `sage_attention`; the undo."""
    from diffusers.models.transformers import transformer_wan

    dispatch = transformer_wan.dispatch_attention_fn

    def to_sage(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None or kwargs.get("parallel_config") is not None:
            return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)
        return sage_attention(query, key, value)

    transformer_wan.dispatch_attention_fn = to_sage
    return lambda: setattr(transformer_wan, "dispatch_attention_fn", dispatch)
