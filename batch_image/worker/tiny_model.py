"""A tiny Wan2.2-shaped text-to-video pipeline with random weights, saved in Diffusers format.

Two experts with a boundary ratio, a small UMT5 encoder, a character-level tokenizer built with
`tokenizers`, a small Wan VAE and the UniPC flow scheduler: the same classes and the same loading code
as Wan2.2-T2V-A14B, small enough to render 832x480 on a CPU in about a second.

Two deliberate differences from the real model keep CPU decode fast: the VAE patchifies by 2 (as
Wan2.2's TI2V VAE does), so latents are 1/16 of the frame, and the transformer patch is (1, 1, 1), so
every supported size stays divisible by vae_scale * patch (16).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TINY_BOUNDARY_RATIO = 0.875
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'\"-()"
_MARKER = "tiny-wan.json"  # written last: a folder without it is an unfinished build
TINY_VERSION = 2  # bump when the architecture below changes, so cached copies are rebuilt


def _tokenizer():
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(_CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_pipeline(seed: int = 0):
    """The tiny pipeline in memory (fp32, random weights fixed by `seed`)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKLWan(
        base_dim=2,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=0,
        temperal_downsample=[False, True, True],
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
    )

    def expert() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 1, 1),
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=32,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
        )

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=expert(),
        transformer_2=expert(),
        boundary_ratio=TINY_BOUNDARY_RATIO,
    )


def ensure_tiny_model(directory: Path) -> Path:
    """Build and save the tiny model into `directory` once; later calls reuse it."""
    directory = Path(directory)
    marker = directory / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent reader never sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    build_tiny_pipeline().save_pretrained(staging)
    (staging / _MARKER).write_text(json.dumps({"version": TINY_VERSION}))
    try:
        os.replace(staging, directory)
    except OSError:  # another process won the race (or an old build is there): keep theirs if valid
        import shutil

        if marker.exists() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(staging, directory)
    return directory
