"""Fast-preset pieces measured by benchmarks.presets beside the worker's own FP8 (worker.fp8_linear).

- `apply_torchao_fp8`: torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())`, what QUANTIZATION=fp8
  ran before worker.fp8_linear (`--fp8-impl torchao`; on the H200 it gained nothing eager and did not finish
  compiling in 4.5 min: BENCHMARKS.md, "Fast presets").
- `sage_attention`: SageAttention 2 as a `torch.library` custom op, opaque to dynamo, so a compiled block
  keeps it in its graph (its kernels call torch.cuda.set_device, which breaks a fullgraph trace). Not in the
  job image (no wheel: built from source with the GPU machine's nvcc by run_gpu.sh presets_sage).
- `cudnn_fp8_sdpa`: cuDNN's FP8 flash attention (the cudnn-frontend wheel's `sdpa_fp8` graph) with
  per-tensor e4m3 Q, K, V; the quantization is plain tensor code that compiles into the block around the
  `cudnn_fp8_attention` custom op.
- `fa3_fp8_sdpa`: FlashAttention-3's FP8 forward (`flash_attn_3`, hopper/, built from source by
  benchmarks/build_fa3.sh: no wheel) with per-(batch, head) e4m3 Q, K, V and a bf16 output; K is smoothed
  first, as SageAttention does. Same shape of custom op as cuDNN's.
`route_attention(name)` points the Wan blocks' attention calls at one of them (`ATTENTION_KERNELS`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks import common

SAGE_OP = "wanbench::sage_attention"
CUDNN_FP8_OP = "wanbench::cudnn_fp8_attention"
FA3_FP8_OP = "wanbench::fa3_fp8_attention"
fp8_linear = common.worker_module("fp8_linear")  # the worker's e4m3 quantization
E4M3_MAX = fp8_linear.E4M3_MAX


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


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` in e4m3, scaled so its largest magnitude lands on 448, and the float32 descale (1, 1, 1, 1)."""
    return fp8_linear.quantize_e4m3(x, dims=())


@torch.library.custom_op(CUDNN_FP8_OP, mutates_args=())
def cudnn_fp8_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """cuDNN's `sdpa_fp8` on e4m3 (batch, heads, length, head_dim) views; e4m3 output on V's scale.

    Hopper's FP8 kernel writes O in e4m3 only. O is a convex mix of V's rows, so V's scale fits it.
    """
    out = torch.empty_like(query)
    plan_key = (query.device, *((t.shape, t.stride()) for t in (query, key, value)))
    if plan_key not in _CUDNN_PLANS:
        _CUDNN_PLANS[plan_key] = _build_cudnn_fp8_plan(query, key, value)
    _CUDNN_PLANS[plan_key](query, key, value, descale_q, descale_k, descale_v, out)
    return out


@cudnn_fp8_attention.register_fake
def _(query, key, value, descale_q, descale_k, descale_v) -> torch.Tensor:
    return torch.empty_like(query)


_CUDNN_PLANS: dict[tuple, Callable[..., None]] = {}  # one built cuDNN graph per device, shapes and strides


def _build_cudnn_fp8_plan(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Callable[..., None]:
    import cudnn

    fp8, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    handle = cudnn.create_handle()
    graph = cudnn.pygraph(
        io_data_type=fp8, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle
    )
    q, k, v = (
        graph.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=fp8)
        for name, t in zip("qkv", (query, key, value), strict=True)
    )
    names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    scalars = {n: graph.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32) for n in names}
    o, _, amax_s, amax_o = graph.sdpa_fp8(
        q=q, k=k, v=v, **scalars, is_inference=True, attn_scale=query.shape[-1] ** -0.5,
        use_causal_mask=False, name="wan_fp8_attention",
    )  # fmt: skip
    o.set_output(True).set_dim(list(query.shape)).set_stride(list(query.stride())).set_data_type(fp8)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    device = query.device
    workspace = torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)
    # P, the unnormalised softmax, lies in [0, 1]: it takes e4m3's whole range.
    p_scale = torch.full((1, 1, 1, 1), E4M3_MAX, device=device)
    p_descale = p_scale.reciprocal()
    amaxes = torch.empty((2, 1, 1, 1, 1), device=device)

    def run(query, key, value, descale_q, descale_k, descale_v, out) -> None:
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
        tensors = {
            q: query, k: key, v: value, o: out, amax_s: amaxes[0], amax_o: amaxes[1],
            scalars["descale_q"]: descale_q, scalars["descale_k"]: descale_k, scalars["descale_v"]: descale_v,
            scalars["descale_s"]: p_descale, scalars["scale_s"]: p_scale,
            scalars["scale_o"]: descale_v.reciprocal(),
        }  # fmt: skip
        graph.execute(tensors, workspace, handle=handle)

    return run


def cudnn_fp8_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention on (batch, heads, length, head_dim) tensors by cuDNN's FP8 kernel, in the inputs' dtype."""
    (q8, descale_q), (k8, descale_k), (v8, descale_v) = (quantize_per_tensor(t) for t in (query, key, value))
    out = cudnn_fp8_attention(q8, k8, v8, descale_q, descale_k, descale_v)
    return (out.float() * descale_v).to(query.dtype)


@torch.library.custom_op(FA3_FP8_OP, mutates_args=())
def fa3_fp8_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """FlashAttention-3's FP8 forward on e4m3 (batch, length, heads, head_dim) tensors with float32
    (batch, heads) descales; the output is bf16 (the kernel's, whatever the inputs stood for)."""
    from flash_attn_3.flash_attn_interface import flash_attn_func

    return flash_attn_func(query, key, value, q_descale=descale_q, k_descale=descale_k, v_descale=descale_v)


@fa3_fp8_attention.register_fake
def _(query, key, value, descale_q, descale_k, descale_v) -> torch.Tensor:
    return torch.empty(query.shape, dtype=torch.bfloat16, device=query.device)


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, length, heads, head_dim) `x` in e4m3 with one scale per (batch, head), and that float32
    descale as (batch, heads), the shape FA3 takes."""
    values, scale = fp8_linear.quantize_e4m3(x, dims=(1, 3))
    return values, scale.reshape(x.shape[0], x.shape[2])


def fa3_fp8_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention on (batch, length, heads, head_dim) tensors by FA3's FP8 kernel, in the inputs' dtype.

    K loses its mean over the sequence first (SageAttention's smoothing): every score of a query moves by
    the same amount, which softmax ignores, and e4m3's range goes to what tells the keys apart.
    """
    key = key - key.mean(dim=1, keepdim=True)
    (q8, descale_q), (k8, descale_k), (v8, descale_v) = (quantize_per_head(t) for t in (query, key, value))
    return fa3_fp8_attention(q8, k8, v8, descale_q, descale_k, descale_v).to(query.dtype)


def _cudnn_fp8_nhd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return cudnn_fp8_sdpa(*(t.transpose(1, 2) for t in (query, key, value))).transpose(1, 2)


# route_attention's names -> attention on diffusers' (batch, length, heads, head_dim) tensors.
ATTENTION_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sage": sage_attention,
    "cudnn_fp8": _cudnn_fp8_nhd,
    "fa3_fp8": fa3_fp8_sdpa,
}


def route_attention(name: str) -> Callable[[], None]:
    """Wan blocks' attention (diffusers' dispatch, no mask) -> `ATTENTION_KERNELS[name]`; returns the undo."""
    from diffusers.models.transformers import transformer_wan

    attend = ATTENTION_KERNELS[name]
    dispatch = transformer_wan.dispatch_attention_fn

    def routed(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None or kwargs.get("parallel_config") is not None:
            return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)
        return attend(query, key, value)

    transformer_wan.dispatch_attention_fn = routed
    return lambda: setattr(transformer_wan, "dispatch_attention_fn", dispatch)
