"""ATTENTION_BACKEND: what `auto` picks per GPU, and FA4 routed through torch's own flash-attention op."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch.nn import attention as torch_attention
from worker import attention
from worker.distributed import _use_cp_attention
from worker.settings import Settings

from wanbatch.errors import SpecError

# flash-attn-4 4.0.0b36's `_flash_attn_fwd` returns (out, lse, p, row_max, o_lo); torch unpacks two.
FAKE_FA4 = """
import torch

CALLS = []

def _flash_attn_fwd(q, k, v, **kwargs):
    CALLS.append(kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
    return out, lse, None, None, None

def _flash_attn_bwd(*args, **kwargs):
    raise NotImplementedError
"""


@pytest.fixture
def fake_fa4(tmp_path, monkeypatch):
    """A `flash_attn.cute.interface` with flash-attn-4's signature (no GPU needed), on sys.path."""
    package = tmp_path / "flash_attn" / "cute"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")  # flash-attn-4 ships no flash_attn/__init__.py
    (package / "interface.py").write_text(textwrap.dedent(FAKE_FA4))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules
    from torch.nn.attention import _fa4

    torch_attention.restore_flash_attention_impl(_raise_warn=False)
    _fa4._fa4_import_module.cache_clear()
    for name in [n for n in sys.modules if n.startswith("flash_attn") or n == attention.FA4_ADAPTER]:
        del sys.modules[name]


def _gpu(monkeypatch, major: int, installed: set[str]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(attention, "_installed", lambda module: module in installed)


FA4_MODULE = "flash_attn.cute.interface"


@pytest.mark.parametrize(
    ("major", "installed", "expected"),
    [
        (9, {FA4_MODULE, "flash_attn_interface", "flash_attn_2_cuda"}, "fa4"),  # H100/H200
        (10, {FA4_MODULE}, "fa4"),  # B200
        (8, {FA4_MODULE}, "native"),  # L40S (sm89) and A100: torch's FA4 route refuses them
        (8, {FA4_MODULE, "flash_attn_2_cuda"}, "flash"),
        (9, {"flash_attn_interface"}, "_flash_3"),
        (9, set(), "native"),
    ],
)
def test_auto_picks_the_fastest_installed_kernel_for_the_gpu(monkeypatch, major, installed, expected):
    _gpu(monkeypatch, major, installed)
    assert attention.pick_attention_backend("auto", "cuda") == expected


def test_auto_is_sdpa_off_cuda_and_explicit_choices_pass_through():
    assert attention.pick_attention_backend("auto", "cpu") == "native"
    assert attention.pick_attention_backend("_native_cudnn", "cuda") == "_native_cudnn"


def test_unknown_backend_and_fa4_without_the_package_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="ATTENTION_BACKEND must be one of auto, native, fa4"):
        attention.pick_attention_backend("fa5", "cuda")
    _gpu(monkeypatch, 9, set())
    with pytest.raises(ValueError, match="flash-attn-4"):
        attention.pick_attention_backend("fa4", "cuda")
    # Installed, but the GPU (an L40S) or the device cannot run it: said before any render.
    _gpu(monkeypatch, 8, {FA4_MODULE})
    with pytest.raises(ValueError, match=r"needs an sm90/sm100 GPU \(here: cuda, sm8x\)"):
        attention.pick_attention_backend("fa4", "cuda")
    with pytest.raises(ValueError, match="here: cpu"):
        attention.pick_attention_backend("fa4", "cpu")
    _gpu(monkeypatch, 9, {FA4_MODULE})
    assert attention.pick_attention_backend("fa4", "cuda") == "fa4"
    with pytest.raises(SpecError, match="ATTENTION_BACKEND"):
        Settings.from_env({"SPEC_URI": "/tmp/spec.json", "ATTENTION_BACKEND": "fa5"})


def test_flash_attn_4_alone_is_not_taken_for_flash_attn_2(fake_fa4):
    # flash-attn-4 creates a `flash_attn` namespace package: `find_spec("flash_attn")` alone would say FA2.
    assert attention.fa4_installed()
    assert not attention.fa2_installed()


def test_fa4_is_installed_into_torchs_flash_op_through_the_adapter(fake_fa4):
    from torch.nn.attention import _fa4

    attention.activate_fa4()
    attention.activate_fa4()  # once per process: a second call changes nothing
    assert torch_attention.current_flash_attention_impl() == "FA4"
    # torch's own glue (what aten's flash op calls on the GPU), fed by the adapter: two values back
    # although the package returns five (what failed on the H200 with torch's default module path).
    q, k, v = (torch.randn(1, 16, 2, 8) for _ in range(3))  # (batch, seq, heads, dim) as FA4 takes them
    out, lse = _fa4._fa4_run_forward(q, k, v, None, None, None, None, 0.5, False, None, None, None)
    fake = sys.modules["flash_attn.cute.interface"]
    assert out.shape == q.shape and lse.shape == (1, 2, 16)
    assert fake.CALLS[-1]["return_lse"] is True and fake.CALLS[-1]["softmax_scale"] == 0.5


class _Expert:
    def __init__(self):
        self.backends: list[str] = []

    def set_attention_backend(self, name: str) -> None:
        self.backends.append(name)


def test_use_attention_backend_runs_fa4_through_diffusers_native_flash(monkeypatch):
    activated = []
    monkeypatch.setattr(attention, "activate_fa4", lambda: activated.append(True))
    fa4, cudnn, native = _Expert(), _Expert(), _Expert()
    attention.use_attention_backend(fa4, "fa4")
    attention.use_attention_backend(cudnn, "_native_cudnn")
    attention.use_attention_backend(native, "native")
    assert fa4.backends == ["_native_flash"] and activated == [True]
    assert cudnn.backends == ["_native_cudnn"] and native.backends == []


def test_context_parallelism_keeps_fa4_and_replaces_kernels_without_a_cp_path(monkeypatch):
    monkeypatch.setattr(attention, "_installed", lambda module: False)
    kept = SimpleNamespace(attention_backend="fa4")
    expert = _Expert()
    _use_cp_attention(kept, [expert])
    assert kept.attention_backend == "fa4" and expert.backends == []  # _native_flash has a CP path
    replaced = SimpleNamespace(attention_backend="_flash_3")
    _use_cp_attention(replaced, [expert])
    assert replaced.attention_backend == "native" and expert.backends == ["native"]
