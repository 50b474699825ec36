"""Fast-preset pieces measured by benchmarks.presets beside the worker's own FP8 (worker.fp8_linear).

- `apply_torchao_fp8`: torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())`, what QUANTIZATION=fp8
  ran before worker.fp8_linear (`--fp8-impl torchao`; on the H200 it gained nothing eager and did not finish
  compiling in 4.5 min: BENCHMARKS.md, "Fast presets").
- `sage_attention`: SageAttention 2 as a `torch.library` custom op, opaque to dynamo, so a compiled block
  keeps it in its graph (its kernels call torch.cuda.set_device, which breaks a fullgraph trace);
  `route_attention_to_sage` points the Wan blocks' attention calls at it. Not in the job image (no wheel:
  built from source with the GPU machine's nvcc by run_gpu.sh presets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SAGE_OP = "wanbench::sage_attention"


def apply_torchao_fp8(model: torch.nn.Module, is_target: Callable[[torch.nn.Module, str], bool]) -> int:
    """torchao's dynamic e4m3 FP8 with per-row scales on the linear layers `is_target` accepts; the count."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    targets = sum(1 for name, module in model.named_modules() if is_target(module, name))
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=is_target)
    return targets


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
