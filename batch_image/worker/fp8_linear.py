"""FP8 linear layers for QUANTIZATION=fp8: e4m3 weights and activations, per-row scales, one `_scaled_mm`.

The arithmetic of torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())` in plain ops: e4m3 weights
with one scale per output row (quantized once), e4m3 activations with one scale per token (each call), one
`torch._scaled_mm` with a bf16 result. Plain ops let inductor fuse the activation scaling into the compiled
block's kernels. Measured on the H200 at 720p (BENCHMARKS.md, "Fast presets"): compiled, 1.09x the lossless
step; torchao's own layers ran 0.97x eager and did not finish compiling in 4.5 min.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


def quantize_e4m3(t: torch.Tensor, dims: tuple[int, ...] = (-1,)) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and their fp32 scale (amax over `dims` / 448: per row by default, `()` for the whole
    tensor), so that `t ~= values * scale`."""
    scale = t.abs().amax(dim=dims, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Float8RowwiseLinear(torch.nn.Module):
    """An nn.Linear with e4m3 weights and activations, per-row scales, one `_scaled_mm` per call.

    `fast_accum` lets Hopper's tensor cores keep the running sum in their own narrower accumulator instead of
    promoting it to fp32 along K (`_scaled_mm(use_fast_accum=True)`): ~10 % faster GEMMs there. Off in the
    worker: it would change what QUANTIZATION=fp8 renders (benchmarks.presets measures it).
    """

    def __init__(self, linear: torch.nn.Linear, fast_accum: bool = False):
        super().__init__()
        self.fast_accum = fast_accum
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_e4m3(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in); passed transposed: the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = quantize_e4m3(x.reshape(-1, self.in_features))
        weight, weight_scale = self.weight.t(), self.weight_scale
        out = torch._scaled_mm(
            values, weight, scale_a=scale, scale_b=weight_scale, bias=self.bias, out_dtype=x.dtype,
            use_fast_accum=self.fast_accum,
        )  # fmt: skip
        return out.reshape(*x.shape[:-1], self.out_features)


def swap_fp8_linears(
    model: torch.nn.Module, is_target: Callable[[torch.nn.Module, str], bool], fast_accum: bool = False
) -> int:
    """Replace every linear layer `is_target` accepts with a Float8RowwiseLinear, in place; the count."""
    targets = [(name, module) for name, module in model.named_modules() if is_target(module, name)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Float8RowwiseLinear(module, fast_accum))
    return len(targets)
