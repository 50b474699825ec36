"""Which attention kernel the experts use (ATTENTION_BACKEND), and putting it in place.

`fa4` is FlashAttention-4 (the `flash-attn-4` package, CuTe DSL kernels for sm90/sm100) installed into
PyTorch's own flash-attention op with torch's FA4 registration (`torch.nn.attention`, through
`worker.fa4_compat`); the experts then call that op through diffusers' `_native_flash` backend, so
regional compile and context parallelism work as with any SDPA kernel. Exact attention like cuDNN's (no
approximation; differs only in rounding).
The other names are diffusers backends, passed through.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from wanbatch.worker_options import ATTENTION_BACKENDS

FA4_ADAPTER = "worker.fa4_compat"
FA4_CAPABILITIES = (9, 10)  # torch's FA4 registration serves sm90 and sm100 only (not the L40S's sm89)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def fa4_installed() -> bool:
    """flash-attn-4 importable and this torch able to route its flash-attention op to it."""
    from torch.nn import attention

    lister = getattr(attention, "list_flash_attention_impls", None)
    return lister is not None and "FA4" in lister() and _installed("flash_attn.cute.interface")


def fa2_installed() -> bool:
    # flash-attn 2's compiled module: flash-attn-4 alone also creates a `flash_attn` namespace package.
    return _installed("flash_attn_2_cuda")


def pick_attention_backend(requested: str, device: str) -> str:
    """`auto`: the fastest exact kernel installed for this GPU; PyTorch's SDPA otherwise."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(
            f"ATTENTION_BACKEND must be one of {', '.join(ATTENTION_BACKENDS)}, got {requested!r}"
        )
    if requested not in ("auto", "fa4"):
        return requested
    on_cuda = str(device).startswith("cuda")
    major = torch.cuda.get_device_capability(torch.device(device))[0] if on_cuda else None
    fa4_runs = major in FA4_CAPABILITIES and fa4_installed()
    if requested == "fa4":
        if not fa4_runs:
            # e.g. reproducing an H100 video elsewhere: another kernel renders, but not the same bytes.
            raise ValueError(
                f"ATTENTION_BACKEND=fa4 needs an sm90/sm100 GPU (here: {device}"
                f"{f', sm{major}x' if major else ''}), flash-attn-4 and torch >= 2.11; "
                "use ATTENTION_BACKEND=auto (CLI: --attention native) to render with this machine's kernel"
            )
        return requested
    if not on_cuda:
        return "native"
    if fa4_runs:
        return "fa4"
    if major == 9 and _installed("flash_attn_interface"):
        return "_flash_3"
    if major >= 8 and fa2_installed():
        return "flash"
    return "native"  # SDPA picks flash/cuDNN/efficient kernels itself


def diffusers_backend(backend: str) -> str:
    """The diffusers attention backend name that runs `backend`."""
    return "_native_flash" if backend == "fa4" else backend


def use_attention_backend(expert: torch.nn.Module, backend: str) -> None:
    """Point one expert's attention at `backend` (FA4: installed into torch's flash op first)."""
    if backend == "fa4":
        activate_fa4()
    if backend != "native":
        expert.set_attention_backend(diffusers_backend(backend))


def activate_fa4() -> None:
    """Route torch's flash-attention op to FA4 (once per process)."""
    from torch.nn import attention
    from torch.nn.attention import _fa4

    if attention.current_flash_attention_impl() == "FA4":
        return
    # torch's own registration, pointed at the adapter that returns what it unpacks.
    register = functools.partial(_fa4.register_flash_attention_fa4, module_path=FA4_ADAPTER)
    attention.register_flash_attention_impl("FA4", register_fn=register)
    attention.activate_flash_attention_impl("FA4")
