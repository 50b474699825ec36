"""VAE decode (AutoencoderKLWan, fp32) and UMT5-XXL text encode (bf16) at the real sizes, random weights.

python -m benchmarks.vae_text                       # GPU machine, ~2 min
python -m benchmarks.vae_text --text-cpu            # + one encode on the host CPU (TEXT_ENCODER_DEVICE=cpu)
python -m benchmarks.vae_text --tiny --device cpu   # code check only
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import log, run_guarded

TINY_LATENTS = {"480p": (16, 3, 8, 8), "720p": (16, 3, 8, 16)}


def vae_config(tiny: bool) -> dict[str, Any]:
    # vae/config.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers (the Wan2.1 VAE) is the class default.
    return dict(base_dim=8, z_dim=16) if tiny else dict(base_dim=96, z_dim=16)


def umt5_config(tiny: bool) -> Any:
    from transformers import UMT5Config

    if tiny:
        return UMT5Config(
            vocab_size=256,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
        )
    # text_encoder/config.json of the same repo (umt5-xxl encoder).
    return UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_decoder_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
    )


def build_vae(device: str, tiny: bool) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return common.materialize(lambda: AutoencoderKLWan(**vae_config(tiny)), device, torch.float32)


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z, return_dict=False)[0]


def vae_phase(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    vae = build_vae(args.device, args.tiny)
    shapes = TINY_LATENTS if args.tiny else common.LATENT_SHAPES
    gen = torch.Generator(device=args.device).manual_seed(0)
    # Warm up the conv kernels on a small latent so the first size is not charged for it.
    decode(vae, torch.randn(1, 16, 2, 8, 8, generator=gen, device=args.device))
    for tiled in (False, True):
        vae.enable_tiling() if tiled else vae.disable_tiling()
        for size in args.sizes:
            z = torch.randn(1, *shapes[size], generator=gen, device=args.device)
            key = f"vae_decode_{size}{'_tiled' if tiled else ''}"

            def one(z: torch.Tensor = z) -> dict[str, Any]:
                res = common.timed_runs(lambda: decode(vae, z), args.device, warmup=0, reps=1)
                out = res.pop("out")
                return {**res, "out_shape": list(out.shape), "finite": bool(torch.isfinite(out).all())}

            rec[key] = run_guarded(rec, key, one)
            if rec[key]:
                log(f"{key}: {rec[key]['median_s']:.2f} s, peak {rec[key]['peak_gib']} GiB")
            common.free_memory()


def build_umt5(device: str, tiny: bool, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    from transformers import UMT5EncoderModel

    cfg = umt5_config(tiny)
    keep = getattr(UMT5EncoderModel, "_keep_in_fp32_modules", None) or ()
    return common.materialize(lambda: UMT5EncoderModel(cfg), device, dtype, keep_fp32=keep)


def encode(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def text_phase(device: str, args: argparse.Namespace, rec: dict[str, Any], batch: int, reps: int) -> None:
    """Encode a prompt (and the negative prompt: batch 2) padded to 512 tokens, as WanPipeline does."""
    model = build_umt5(device, args.tiny)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, common.TEXT_LEN), generator=gen).to(device)
    mask = torch.ones_like(ids)
    res = common.timed_runs(lambda: encode(model, ids, mask), device, warmup=1, reps=reps)
    out = res.pop("out")
    rec[f"umt5_encode_{device}_b{batch}"] = {
        **res,
        "finite": bool(torch.isfinite(out).all()),
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
    }
    log(f"umt5 encode on {device}, batch {batch}: {res['median_s']:.3f} s, peak {res['peak_gib']} GiB")


def summarize(rec: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for name, val in rec.items():
        if isinstance(val, dict) and "median_s" in val and name.startswith(("vae_decode", "umt5_encode")):
            keys[f"{name}_s"] = round(val["median_s"], 3)
            if val.get("peak_gib") is not None:
                keys[f"{name}_peak_gib"] = val["peak_gib"]
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="480p,720p", type=lambda s: s.split(","))
    parser.add_argument("--text-cpu", action="store_true", help="also time one encode on the host CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size not in common.LATENT_SHAPES:
            parser.error(f"--sizes: unknown size {size!r}; choose from {sorted(common.LATENT_SHAPES)}")
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"facts": common.machine_facts()}

    def save() -> None:
        common.write_part("vae_text", rec)
        common.merge_results(summarize(rec))

    run_guarded(rec, "text", lambda: text_phase(args.device, args, rec, batch=2, reps=3))
    common.free_memory()
    save()
    run_guarded(rec, "vae", lambda: vae_phase(args, rec))
    common.free_memory()
    save()
    if args.text_cpu:
        run_guarded(rec, "text_cpu", lambda: text_phase("cpu", args, rec, batch=1, reps=1))
        save()
    log(f"done in {time.perf_counter() - t0:.0f} s; errors: {rec.get('errors', {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
