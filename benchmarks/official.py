"""The official Wan2.2 `WanModel` (github Wan-Video/Wan2.2), at the A14B shapes with random bf16 weights.

Its code is not part of this repository: copy `wan/modules/model.py` and `wan/modules/attention.py` from
a checkout into `.official/wan_official/` (git-ignored; see BENCHMARKS.md). flash-attn cannot be installed
on the GPU machine, so its `flash_attention` call is routed to torch's `scaled_dot_product_attention` with
default backend selection. That is exact here: the official self-attention passes full-length
`k_lens` and the cross-attention pads the text to 512 tokens with no lengths, so no mask is needed.
Run it as the official `generate.py --convert_model_dtype` does: weights cast to bf16, under bf16 autocast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import REPO_ROOT, materialize

OFFICIAL_DIR = REPO_ROOT / ".official"


def sdpa_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: Any = None,
    k_lens: Any = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    q_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    deterministic: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    version: int | None = None,
) -> torch.Tensor:
    """Drop-in for the official `flash_attention` ([B, L, N, C] in and out) on torch SDPA."""
    if q_lens is not None or window_size != (-1, -1):
        raise NotImplementedError("q_lens and windowed attention are not routed to SDPA")
    if k_lens is not None and any(n != k.size(1) for n in k_lens.tolist()):
        raise NotImplementedError("padded keys would need a mask; the T2V shapes here have none")
    out_dtype = q.dtype
    half = (torch.float16, torch.bfloat16)
    q, k, v = (x if x.dtype in half else x.to(dtype) for x in (q, k, v))
    q, k = q.to(v.dtype), k.to(v.dtype)
    if q_scale is not None:
        q = q * q_scale
    x = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout_p,
        is_causal=causal,
        scale=softmax_scale,
    )
    return x.transpose(1, 2).type(out_dtype)


def load_official_module(root: Path = OFFICIAL_DIR) -> ModuleType:
    """Import `wan_official.model` from the copied files and route its attention to SDPA."""
    if not (root / "wan_official" / "model.py").exists():
        raise FileNotFoundError(
            f"{root}/wan_official/model.py is missing: copy wan/modules/model.py and attention.py from "
            "github.com/Wan-Video/Wan2.2 there (see BENCHMARKS.md)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("wan_official.model")
    module.flash_attention = sdpa_flash_attention  # model.py bound the name at import
    return module


def official_config(tiny: bool = False) -> dict[str, Any]:
    if tiny:
        return dict(
            model_type="t2v",
            dim=32,
            ffn_dim=64,
            freq_dim=256,
            text_dim=32,
            num_heads=2,
            num_layers=2,
            in_dim=16,
            out_dim=16,
        )
    # wan/configs/wan_t2v_A14B.py
    return dict(
        model_type="t2v",
        patch_size=(1, 2, 2),
        text_len=512,
        in_dim=16,
        dim=5120,
        ffn_dim=13824,
        freq_dim=256,
        text_dim=4096,
        out_dim=16,
        num_heads=40,
        num_layers=40,
        window_size=(-1, -1),
        qk_norm=True,
        cross_attn_norm=True,
        eps=1e-6,
    )


def build_official(device: torch.device | str, tiny: bool = False) -> torch.nn.Module:
    module = load_official_module()
    # Its fp32 modulation relies on CUDA autocast; off CUDA (the tiny code check) build it in fp32.
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return materialize(lambda: module.WanModel(**official_config(tiny)), device, dtype)


def forward_official(
    model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """One batch-1 forward as the official sampler calls it (cond and uncond are separate calls)."""
    _, _, f, h, w = latents.shape
    seq_len = f * (h // 2) * (w // 2)
    on_cuda = latents.device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    with torch.amp.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda), torch.no_grad():
        return model(
            [latents[0].to(dtype)], t=timestep[:1].float(), context=[context[0].to(dtype)], seq_len=seq_len
        )[0]
