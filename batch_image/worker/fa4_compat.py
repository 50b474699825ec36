"""flash-attn-4 in the shape torch's FA4 registration expects: `_flash_attn_fwd` returns (out, lse).

torch 2.11-2.13 (`torch.nn.attention._fa4`) unpacks two values; flash-attn-4 4.0.0b20 and later return
four or five (the extra ones feed its own backward variants and are None here). Imported only on GPUs
where `worker.attention` installs FA4.
"""

from __future__ import annotations

from typing import Any

from flash_attn.cute import interface as _fa4


def _flash_attn_fwd(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    out, lse, *_ = _fa4._flash_attn_fwd(*args, **kwargs)
    return out, lse


_flash_attn_bwd = _fa4._flash_attn_bwd
