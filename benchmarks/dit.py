"""DiT step benchmark: the real Wan2.2-A14B transformer (diffusers `WanTransformer3DModel`) with random bf16
weights, side by side with the official `WanModel`, against the card's measured bf16 matmul rate.

    python -m benchmarks.dit                      # everything, 480p and 720p (GPU machine, ~8 min)
    python -m benchmarks.dit --sizes 720p --no-compile --no-official
    python -m benchmarks.dit --tiny --device cpu  # a 2-layer model on small latents: checks the code only

Phases run in order of importance and each is guarded: a failure is recorded under `errors` and the
next phase runs. Results are merged into results.json after every phase, so a timeout loses little.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.common import log, run_guarded

# Diffusers backends plus the worker's `fa4` (FlashAttention-4 inside torch's flash op), last: it is
# switched off again after each use so `_native_flash` keeps meaning torch's own FA2 kernel.
ATTENTION_BACKENDS = ("_native_cudnn", "_native_flash", "_native_efficient", "sage", "fa4")
TINY_LATENTS = {"480p": (16, 3, 6, 8), "720p": (16, 3, 8, 12)}


def a14b_config(tiny: bool = False) -> dict[str, Any]:
    """transformer/config.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers (both experts share it)."""
    cfg: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=13824,
        num_layers=40,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=None,
    )
    if tiny:
        cfg.update(num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64, num_layers=2)
    return cfg


def build_ours(device: torch.device | str, tiny: bool = False) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    cfg = a14b_config(tiny)
    return common.materialize(
        lambda: WanTransformer3DModel(**cfg),
        device,
        torch.bfloat16,
        keep_fp32=WanTransformer3DModel._keep_in_fp32_modules,
    )


def latent_shape(size: str, tiny: bool) -> tuple[int, int, int, int]:
    return (TINY_LATENTS if tiny else common.LATENT_SHAPES)[size]


def make_inputs(
    size: str, batch: int, device: torch.device | str, tiny: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    text_dim = a14b_config(tiny)["text_dim"]
    latents = torch.randn(
        batch, *latent_shape(size, tiny), generator=gen, device=device, dtype=torch.bfloat16
    )
    timestep = torch.full((batch,), 999.0, device=device)
    context = torch.randn(
        batch, common.TEXT_LEN, text_dim, generator=gen, device=device, dtype=torch.bfloat16
    )
    return latents, timestep, context


def forward_ours(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    latents, timestep, context = inputs
    with torch.no_grad():
        return model(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=context, return_dict=False
        )[0]


def cfg_step(model: torch.nn.Module, cond: tuple, uncond: tuple, guidance: float = 4.0) -> torch.Tensor:
    """One denoising step's network work: the conditional and unconditional forwards, combined by CFG."""
    noise = forward_ours(model, cond)
    noise_uncond = forward_ours(model, uncond)
    return noise_uncond + guidance * (noise - noise_uncond)


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs difference and relative L2 error against the default eager output."""
    out, ref = out.float().cpu(), ref.float().cpu()
    return {
        "max_abs_diff": float((out - ref).abs().max()),
        "rel_l2": float((out - ref).norm() / ref.norm().clamp_min(1e-12)),
        "finite": bool(torch.isfinite(out).all()),
    }


def use_backend(model: torch.nn.Module, backend: str) -> None:
    """The worker's own switch (worker.attention), so `fa4` here is exactly what the worker runs."""
    common.worker_module("attention").use_attention_backend(model, backend)


def use_picked_backend(model: torch.nn.Module, requested: str, device: str) -> str:
    """What the worker's ATTENTION_BACKEND=`requested` picks on `device`, applied to `model`; its name."""
    backend = common.worker_module("attention").pick_attention_backend(requested, device)
    use_backend(model, backend)
    return backend


def reset_backend(model: torch.nn.Module) -> None:
    # reset_attention_backend() leaves diffusers' global active backend set: name the default.
    model.set_attention_backend("native")
    restore_torch_flash()


def restore_torch_flash() -> None:
    """Undo `fa4`: torch's flash op runs its own FA2 kernel again."""
    from torch.nn import attention

    if getattr(attention, "current_flash_attention_impl", lambda: None)():
        attention.restore_flash_attention_impl()


def fa4_installed() -> bool:
    return common.worker_module("attention").fa4_installed()


def seq_len(size: str, tiny: bool) -> int:
    _, f, h, w = latent_shape(size, tiny)
    return f * (h // 2) * (w // 2)


def flops_per_forward(size: str, tiny: bool) -> float:
    cfg = a14b_config(tiny)
    return common.dit_flops(
        seq_len(size, tiny),
        dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
        ffn=cfg["ffn_dim"],
        layers=cfg["num_layers"],
    )


def measure_forward(fn: Any, device: str, warmup: int, reps: int) -> dict[str, Any]:
    res = common.timed_runs(fn, device, warmup, reps)
    out = res.pop("out")
    res["out_cpu"] = out.float().cpu()
    return res


def eager_phase(
    model: torch.nn.Module,
    size: str,
    args: argparse.Namespace,
    rec: dict[str, Any],
    refs: dict[str, torch.Tensor],
) -> None:
    """Batch 1 (the CFG pair as two calls, as WanPipeline does) and the pair as one batch of 2."""
    dev, tiny = args.device, args.tiny
    reps = 2 if size == "720p" else 3
    inputs = make_inputs(size, 1, dev, tiny)
    b1 = measure_forward(lambda: forward_ours(model, inputs), dev, warmup=1, reps=reps)
    refs[size] = b1.pop("out_cpu")
    # The noise floor for "lossless": the same call twice (second output vs the first kept output).
    _, again = common.time_call(lambda: forward_ours(model, inputs), dev)
    b1["repeat"] = compare(again, refs[size])
    rec[f"ours_{size}_b1"] = b1
    log(f"ours {size} batch 1: {b1['median_s']:.3f} s, peak {b1['peak_gib']} GiB")
    inputs2 = make_inputs(size, 2, dev, tiny)
    # At 720p one batch-2 call (its first, so it includes the attention plan build for that shape).
    b2 = measure_forward(lambda: forward_ours(model, inputs2), dev, warmup=0 if size == "720p" else 1, reps=1)
    b2.pop("out_cpu")
    rec[f"ours_{size}_b2"] = b2
    log(f"ours {size} batch 2: {b2['median_s']:.3f} s, peak {b2['peak_gib']} GiB")


def attention_microbench(size: str, args: argparse.Namespace, rec: dict[str, Any]) -> None:
    """Self-attention alone at the full sequence length, per SDPA backend, in TFLOP/s."""
    from torch.nn.attention import SDPBackend

    cfg = a14b_config(args.tiny)
    heads, hd, n = cfg["num_attention_heads"], cfg["attention_head_dim"], seq_len(size, args.tiny)
    gen = torch.Generator(device=args.device).manual_seed(1)
    q, k, v = (
        torch.randn(1, heads, n, hd, generator=gen, device=args.device, dtype=torch.bfloat16)
        for _ in range(3)
    )
    flops = 4 * n * n * heads * hd
    ref = F.scaled_dot_product_attention(q, k, v)
    out: dict[str, Any] = {"seq_len": n}
    choices = {
        "default": None,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    if fa4_installed():
        choices["fa4"] = SDPBackend.FLASH_ATTENTION  # with FA4 installed into the flash op (below)
    for name, backend in choices.items():
        if name == "fa4":
            common.worker_module("attention").activate_fa4()

        def call(backend: Any = backend) -> torch.Tensor:
            return sdpa(q, k, v, backend)

        def bench(call: Any = call) -> dict[str, Any]:
            res = common.timed_runs(call, args.device, warmup=2, reps=3)
            diff = compare(res.pop("out"), ref)
            return {"median_s": res["median_s"], "tflops": flops / res["median_s"] / 1e12, **diff}

        out[name] = run_guarded(out, name, bench)
    if "fa4" in choices:
        out["fa4_kernels"] = run_guarded(
            out, "profile_fa4", lambda: _kernel_names(lambda: sdpa(q, k, v, choices["fa4"]))
        )
        restore_torch_flash()
    out["default_kernels"] = run_guarded(out, "profile", lambda: _kernel_names(lambda: sdpa(q, k, v)))
    rec[f"attention_{size}"] = out
    log(
        f"attention {size}: "
        + ", ".join(
            f"{k}={v['tflops']:.0f} TFLOP/s" for k, v in out.items() if isinstance(v, dict) and "tflops" in v
        )
    )


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Any = None) -> torch.Tensor:
    """torch SDPA with one backend forced (None: its own selection)."""
    from torch.nn.attention import sdpa_kernel

    if backend is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v)


def _kernel_names(fn: Any) -> list[str]:
    """Names of the GPU kernels one call launches (which SDPA backend the default picked)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        common.sync("cuda")
    return sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA"})[:12]


def backends_phase(
    model: torch.nn.Module,
    size: str,
    args: argparse.Namespace,
    rec: dict[str, Any],
    refs: dict[str, torch.Tensor],
) -> None:
    """The whole forward under each diffusers attention backend that runs here, against the default."""
    inputs = make_inputs(size, 1, args.device, args.tiny)
    out: dict[str, Any] = {}
    for backend in args.backends:

        def bench(backend: str = backend) -> dict[str, Any]:
            use_backend(model, backend)
            try:
                res = measure_forward(lambda: forward_ours(model, inputs), args.device, warmup=1, reps=2)
            finally:
                reset_backend(model)
            return {
                "median_s": res["median_s"],
                "peak_gib": res["peak_gib"],
                **compare(res["out_cpu"], refs[size]),
            }

        out[backend] = run_guarded(out, backend, bench)
        if out[backend]:
            log(
                f"backend {backend} {size}: {out[backend]['median_s']:.3f} s, "
                f"max abs diff {out[backend]['max_abs_diff']:.3g}"
            )
    rec[f"backends_{size}"] = out


def official_phase(
    size: str, official: torch.nn.Module, args: argparse.Namespace, rec: dict[str, Any]
) -> None:
    from benchmarks.official import forward_official

    inputs = make_inputs(size, 1, args.device, args.tiny)
    res = measure_forward(lambda: forward_official(official, *inputs), args.device, warmup=1, reps=1)
    res.pop("out_cpu")
    rec[f"official_{size}_b1"] = res
    log(f"official {size} batch 1: {res['median_s']:.3f} s, peak {res['peak_gib']} GiB")


def compile_phase(
    model: torch.nn.Module,
    size: str,
    args: argparse.Namespace,
    rec: dict[str, Any],
    refs: dict[str, torch.Tensor],
) -> None:
    """Regional compile of the 40 repeated blocks with the attention kernel the worker picks (`auto`);
    the first call's time includes compiling for this shape."""
    if not getattr(model, "_bench_compiled", False):
        rec["compile_attention"] = use_picked_backend(model, args.compile_attention, args.device)
        model.compile_repeated_blocks(fullgraph=True, dynamic=False)
        model._bench_compiled = True
    inputs = make_inputs(size, 1, args.device, args.tiny)
    first_s, _ = common.time_call(lambda: forward_ours(model, inputs), args.device)
    res = measure_forward(lambda: forward_ours(model, inputs), args.device, warmup=0, reps=2)
    diff = compare(res.pop("out_cpu"), refs[size])
    rec[f"compiled_{size}_b1"] = {**res, "first_call_s": first_s, **diff}
    log(
        f"compiled {size} ({rec['compile_attention']}): first call {first_s:.1f} s, "
        f"then {res['median_s']:.3f} s, max abs diff {diff['max_abs_diff']:.3g}"
    )


def accuracy_phase(size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Which bf16 variants are lossless: each one's error against an fp32 forward of the same weights.

    The bf16 variants (eager with the default attention, the FA2 backend, regional compile) differ from
    each other only in rounding; a variant is lossless if it is no farther from fp32 than the default is.
    """
    inputs = make_inputs(size, 1, args.device, args.tiny)
    model = build_ours(args.device, args.tiny)
    outs = {"eager_default": forward_ours(model, inputs).float().cpu()}
    for backend in ("_native_flash", "fa4") if fa4_installed() else ("_native_flash",):
        use_backend(model, backend)
        outs[f"eager_{backend.lstrip('_')}"] = forward_ours(model, inputs).float().cpu()
        reset_backend(model)
    # Compiled as the worker runs it: regional compile with the attention `auto` picks here.
    use_picked_backend(model, "auto", args.device)
    model.compile_repeated_blocks(fullgraph=True, dynamic=False)
    forward_ours(model, inputs)  # compile
    outs["compiled_default"] = forward_ours(model, inputs).float().cpu()
    reset_backend(model)
    common.worker_module("pipeline").uncompile(model)  # the reference must not be compiled
    model = model.float()  # the same weights, upcast; matmuls in true fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t, ref = common.time_call(lambda: forward_ours(model, tuple(x.float() for x in inputs)), args.device)
    ref = ref.float().cpu()
    res: dict[str, Any] = {"fp32_forward_s": t}
    res.update({f"{name}_vs_fp32": compare(out, ref) for name, out in outs.items()})
    res["compiled_vs_eager"] = compare(outs["compiled_default"], outs["eager_default"])
    return res


def summarize(rec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The results.json keys: best lossless CFG step per size, MFU, ratio to the official code."""
    keys: dict[str, Any] = {
        "card": rec["facts"].get("card"),
        "torch": rec["facts"].get("torch"),
        "matmul_tflops": rec.get("matmul_tflops"),
        "dit_facts": rec["facts"],
    }
    for size in args.sizes:
        b1, b2 = rec.get(f"ours_{size}_b1"), rec.get(f"ours_{size}_b2")
        comp = rec.get(f"compiled_{size}_b1")
        if not b1:
            continue
        eager_cfg = min(2 * b1["median_s"], b2["median_s"] if b2 else float("inf"))
        best_b1 = min(b1["median_s"], comp["median_s"] if comp else float("inf"))
        best_cfg = min(eager_cfg, 2 * best_b1)
        keys[f"dit_{size}_cfg_step_s_eager"] = round(eager_cfg, 3)
        keys[f"dit_{size}_cfg_step_s"] = round(best_cfg, 3)
        keys[f"dit_{size}_cfg_step_mode"] = (
            f"regional compile, attention {rec.get('compile_attention')}"
            if comp and 2 * comp["median_s"] <= eager_cfg
            else "eager"
        )
        keys[f"dit_{size}_peak_gib"] = b1["peak_gib"]
        if comp:
            keys[f"dit_{size}_compile_speedup"] = round(b1["median_s"] / comp["median_s"], 3)
            keys[f"dit_{size}_compile_warmup_s"] = round(comp["first_call_s"], 1)
        if rec.get("matmul_tflops"):
            rate = 2 * flops_per_forward(size, args.tiny) / best_cfg / 1e12
            keys[f"dit_{size}_tflops"] = round(rate, 1)
            keys[f"dit_{size}_mfu"] = round(rate / rec["matmul_tflops"], 3)
        att = rec.get(f"attention_{size}") or {}
        for name in ("default", "cudnn", "flash", "efficient", "fa4"):
            if att.get(name):
                keys[f"attention_{size}_tflops_{name}"] = round(att[name]["tflops"], 1)
        if att.get("default_kernels"):
            keys["sdpa_default_kernels"] = att["default_kernels"]
        off = rec.get(f"official_{size}_b1")
        if off:
            keys[f"official_{size}_forward_s"] = round(off["median_s"], 3)
            keys[f"official_speedup_{size}_eager"] = round(off["median_s"] / b1["median_s"], 3)
            keys[f"official_speedup_{size}"] = round(off["median_s"] / best_b1, 3)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="480p,720p", type=lambda s: s.split(","))
    parser.add_argument("--backends", default=",".join(ATTENTION_BACKENDS), type=lambda s: s.split(","))
    parser.add_argument("--backend-size", default="480p", help="size for the per-backend forward comparison")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-attention", default="auto", help="ATTENTION_BACKEND of the compiled phase")
    parser.add_argument("--no-official", dest="official", action="store_false")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip optional phases past this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer model, small latents (code check only)")
    parser.add_argument("--accuracy", action="store_true", help="only: bf16 variants against an fp32 forward")
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size not in common.LATENT_SHAPES:
            parser.error(f"--sizes: unknown size {size!r}; choose from {sorted(common.LATENT_SHAPES)}")
    if args.accuracy:
        acc: dict[str, Any] = {"facts": common.machine_facts()}
        for size in args.sizes:
            acc[size] = run_guarded(acc, size, lambda size=size: accuracy_phase(size, args))
            log(f"accuracy {size}: {acc[size]}")
            common.write_part("dit_accuracy", acc)
        common.merge_results({f"dit_{size}_accuracy": acc[size] for size in args.sizes if acc.get(size)})
        return 0
    t0 = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    rec: dict[str, Any] = {"facts": common.machine_facts(), "args": vars(args)}
    refs: dict[str, torch.Tensor] = {}

    def save() -> None:
        common.write_part("dit", {k: v for k, v in rec.items()})
        common.merge_results(summarize(rec, args))

    log(f"facts: {rec['facts']}")
    rec["matmul_tflops"] = run_guarded(
        rec, "matmul", lambda: common.matmul_tflops(args.device, n=256 if args.tiny else 8192)
    )
    log(f"bf16 matmul: {rec['matmul_tflops']:.0f} TFLOP/s" if rec["matmul_tflops"] else "matmul failed")
    model = run_guarded(rec, "build_ours", lambda: build_ours(args.device, args.tiny))
    if model is not None:
        for size in args.sizes:
            run_guarded(rec, f"eager_{size}", lambda size=size: eager_phase(model, size, args, rec, refs))
            save()
        if args.device == "cuda":
            run_guarded(rec, "attention_micro", lambda: attention_microbench(args.sizes[-1], args, rec))
        if args.backend_size in refs:
            run_guarded(rec, "backends", lambda: backends_phase(model, args.backend_size, args, rec, refs))
        save()
        del model
        common.free_memory()
    if args.official:
        from benchmarks.official import build_official

        official = run_guarded(rec, "build_official", lambda: build_official(args.device, args.tiny))
        for size in reversed(args.sizes):  # 720p first: the ratio that matters
            if official is not None and left() > 60:
                run_guarded(
                    rec, f"official_{size}", lambda size=size: official_phase(size, official, args, rec)
                )
                save()
        del official
        common.free_memory()
    if args.compile:
        model = run_guarded(rec, "rebuild_ours", lambda: build_ours(args.device, args.tiny))
        for size in reversed(args.sizes):
            if model is not None and size in refs and left() > 120:
                run_guarded(
                    rec, f"compile_{size}", lambda size=size: compile_phase(model, size, args, rec, refs)
                )
                save()
    save()
    log(f"done in {time.perf_counter() - t0:.0f} s; errors: {rec.get('errors', {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
