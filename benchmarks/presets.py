"""Fast presets on the real A14B DiT (random bf16 weights), one CFG step at 720p, against the lossless one.

    python -m benchmarks.presets                  # GPU machine, ~4 min
    python -m benchmarks.presets --tiny --device cpu --only lossless   # checks the code on a CPU

Variants, in this order on one model (FP8 quantizes it in place):
  lossless   regional compile, the attention the worker's `auto` picks (FA4 on sm90 with flash-attn-4,
             else SDPA): the worker's default
  fp8        + FP8 linear layers (worker.presets.apply_fp8: dynamic e4m3, per-row scales, one
             `torch._scaled_mm` per layer), compiled, same attention (what QUANTIZATION=fp8 runs)
  fp8_cudnn  + cuDNN's FP8 flash attention (per-tensor e4m3 Q, K, V; benchmarks.fp8_candidates) inside the
             compiled blocks, when the `nvidia-cudnn-frontend` wheel (`cudnn`) imports
  fp8_sage   + SageAttention 2 (INT8 QK, FP8 PV; `sageattn`, which picks the sm90 kernel there) as a custom op
             inside the compiled blocks, when `sageattention>=2.1.1` imports (built from source on the GPU
             machine: run_gpu.sh presets_sage)
  fp8_fa3    + FlashAttention-3's FP8 forward (per-(batch, head) e4m3 Q, K, V, K smoothed, bf16 output) as a
             custom op inside the compiled blocks, when `flash_attn_3` imports (built from source:
             benchmarks/build_fa3.sh; run_gpu.sh presets_fa3)
`--fp8-impl scaled_mm` (the worker's, worker.fp8_linear) records its variants as `fp8_mm`, `fp8_mm_cudnn`,
`fp8_mm_sage` and `fp8_mm_fa3`; `--fp8-impl scaled_mm_fast` the same layers with `use_fast_accum` (not the
worker's), as `fp8_mm_fast*`; `--fp8-impl torchao` torchao's layers (what the worker ran before), as `fp8`.
Each records the CFG step time, the first (compiling) call, peak memory and the distance of its output
from the lossless one. SageAttention is built while a first process runs, so `fp8_sage` runs in a second
process once the build is done (`fp8_fa3` likewise, recorded as `presets_fa3`): the first saves the
lossless output and time (`--save-ref`), the second loads them (`--ref`; same seed, same weights).
`fp8_speedup_720p` = lossless step / best FP8 step, merged into results.json.
The self-attention alone (SDPA vs the FP8/INT8 kernels) is timed too, in TFLOP/s of the bf16-equivalent work.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import common, dit, fp8_candidates
from benchmarks.common import log, run_guarded

VARIANTS = ("lossless", "fp8", "fp8_cudnn", "fp8_sage", "fp8_fa3")
# fast-attention variant -> (its fp8_candidates.route_attention name, the module it needs)
FAST_ATTENTION = {
    "fp8_cudnn": ("cudnn_fp8", "cudnn"),
    "fp8_sage": ("sage", "sageattention"),
    "fp8_fa3": ("fa3_fp8", "flash_attn_3"),
}
# implementation -> the name its records get; scaled_mm_fast: the worker's layers with fast accumulation
FP8_IMPLS = {"torchao": "fp8", "scaled_mm": "fp8_mm", "scaled_mm_fast": "fp8_mm_fast"}


def record_name(fp8_name: str, variant: str) -> str:
    """What an FP8 variant is recorded as: `fp8_cudnn` of `--fp8-impl scaled_mm` is `fp8_mm_cudnn`."""
    return fp8_name + variant.removeprefix("fp8")


FP8_RECORDS = tuple(record_name(impl, variant) for impl in FP8_IMPLS.values() for variant in VARIANTS[1:])


def time_variant(model, cond, uncond, device: str, compile: bool, reps: int) -> dict[str, Any]:
    if compile:
        # Drop an earlier variant's compiled code: the blocks changed.
        common.worker_module("pipeline").uncompile(model)
        model.compile_repeated_blocks(fullgraph=True, dynamic=False)
    common.reset_peak(device)
    first_s, _ = common.time_call(lambda: dit.cfg_step(model, cond, uncond), device)
    res = common.timed_runs(lambda: dit.cfg_step(model, cond, uncond), device, warmup=0, reps=reps)
    out = res.pop("out").float().cpu()
    return {**res, "first_call_s": round(first_s, 2), "compiled": compile, "out": out}


def attention_micro(size: str, device: str, tiny: bool) -> dict[str, Any]:
    """Self-attention at the full sequence: SDPA vs the FP8/INT8 kernels, bf16-equivalent TFLOP/s."""
    cfg = dit.a14b_config(tiny)
    heads, hd, n = cfg["num_attention_heads"], cfg["attention_head_dim"], dit.seq_len(size, tiny)
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (1, heads, n, hd)  # HND, as SDPA takes it
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * n * n * heads * hd
    ref = F.scaled_dot_product_attention(q, k, v)
    calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
    if importlib.util.find_spec("sageattention"):
        import sageattention as sage

        calls["sage_auto"] = lambda: sage.sageattn(q, k, v, tensor_layout="HND")
        calls["sage_qk_int8_pv_fp8_cuda_sm90"] = lambda: sage.sageattn_qk_int8_pv_fp8_cuda_sm90(
            q, k, v, tensor_layout="HND"
        )
    kernel_only = {}
    if importlib.util.find_spec("cudnn"):
        quantized = [t for pair in map(fp8_candidates.quantize_per_tensor, (q, k, v)) for t in pair]
        calls["cudnn_fp8"] = lambda: fp8_candidates.cudnn_fp8_sdpa(q, k, v)  # eager quantize + kernel
        compiled = torch.compile(fp8_candidates.cudnn_fp8_sdpa, fullgraph=True, dynamic=False)
        calls["cudnn_fp8_compiled"] = lambda: compiled(q, k, v)
        kernel_only["cudnn_fp8_kernel"] = lambda: fp8_candidates.cudnn_fp8_attention(
            *quantized[0::2], *quantized[1::2]
        )
    if importlib.util.find_spec("flash_attn_3"):
        from flash_attn_3.flash_attn_interface import flash_attn_func

        q_nhd, k_nhd, v_nhd = (t.transpose(1, 2) for t in (q, k, v))
        calls["fa3_bf16"] = lambda: flash_attn_func(q_nhd, k_nhd, v_nhd).transpose(1, 2)
        compiled_fa3 = torch.compile(fp8_candidates.fa3_fp8_sdpa, fullgraph=True, dynamic=False)
        calls["fa3_fp8_compiled"] = lambda: compiled_fa3(q_nhd, k_nhd, v_nhd).transpose(1, 2)
        per_head = [fp8_candidates.quantize_per_head(t) for t in (q_nhd, k_nhd, v_nhd)]
        kernel_only["fa3_fp8_kernel"] = lambda: fp8_candidates.fa3_fp8_attention(
            *(values for values, _ in per_head), *(descale for _, descale in per_head)
        )
    out: dict[str, Any] = {"seq_len": n}
    for name, call in {**calls, **kernel_only}.items():

        def bench(name=name, call=call) -> dict[str, Any]:
            res = common.timed_runs(call, device, warmup=2, reps=3)
            error = {} if name in kernel_only else dit.compare(res["out"], ref)
            return {"median_s": res["median_s"], "tflops": flops / res["median_s"] / 1e12, **error}

        out[name] = run_guarded(out, name, bench)
    return out


def summarize(rec: dict[str, Any]) -> dict[str, Any]:
    lossless = rec.get("lossless")
    if not lossless:
        return {}
    keys: dict[str, Any] = {"presets_720p_lossless_step_s": round(lossless["median_s"], 3)}
    best = None
    for name in FP8_RECORDS:
        variant = rec.get(name)
        if variant:
            keys[f"presets_720p_{name}_step_s"] = round(variant["median_s"], 3)
            keys[f"presets_720p_{name}_vs_lossless"] = variant["vs_lossless"]
            if best is None or variant["median_s"] < rec[best]["median_s"]:
                best = name
    if best:
        keys["fp8_speedup_720p"] = round(lossless["median_s"] / rec[best]["median_s"], 3)
        keys["fp8_speedup_720p_variant"] = best
        for impl, name in FP8_IMPLS.items():
            if rec.get(name):
                suffix = "" if impl == "torchao" else f"_{impl}"  # torchao's key predates the others
                speedup = lossless["median_s"] / rec[name]["median_s"]
                keys[f"fp8_speedup_720p_linear_only{suffix}"] = round(speedup, 3)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="720p", choices=sorted(common.LATENT_SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer model, small latents (code check only)")
    parser.add_argument("--only", default=",".join(VARIANTS), type=lambda s: s.split(","))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--save-ref", type=Path, default=None, help="save the lossless output and time")
    parser.add_argument("--ref", type=Path, default=None, help="a --save-ref file: skip the lossless run")
    parser.add_argument(
        "--fp8-impl", default="scaled_mm", choices=sorted(FP8_IMPLS), help="FP8 linear layers"
    )
    parser.add_argument(
        "--coordinate-descent",
        action="store_true",
        help="inductor tunes each generated kernel's launch settings (every variant, lossless too)",
    )
    args = parser.parse_args(argv)
    if args.coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    fp8_name = FP8_IMPLS[args.fp8_impl]
    started = time.time()
    compile = args.device.startswith("cuda")
    presets, pipeline = common.worker_module("presets"), common.worker_module("pipeline")
    rec: dict[str, Any] = {"facts": common.machine_facts(), "size": args.size, "args": vars(args)}
    model = dit.build_ours(args.device, args.tiny)
    rec["attention"] = dit.use_picked_backend(model, "auto", args.device)
    cond = dit.make_inputs(args.size, 1, args.device, args.tiny, seed=0)
    _, _, uncond_context = dit.make_inputs(args.size, 1, args.device, args.tiny, seed=1)
    uncond = (cond[0], cond[1], uncond_context)
    ref: torch.Tensor | None = None
    # A second process's record is named after what it adds: `--only fp8_sage` -> presets_sage.json.
    part = "presets" if args.ref is None else "presets_" + "_".join(n.removeprefix("fp8_") for n in args.only)
    if args.ref is not None:
        saved = torch.load(args.ref)
        ref, rec["lossless"] = saved["out"], saved["lossless"]

    def record(name: str, result: dict[str, Any] | None) -> None:
        nonlocal ref
        if result is None:
            return
        out = result.pop("out")
        if ref is None:
            ref = out
        result["vs_lossless"] = dit.compare(out, ref)
        rec[name] = result
        log(f"{name}: step {result['median_s']:.3f} s (first {result['first_call_s']} s), "
            f"peak {result['peak_gib']} GiB, vs lossless {result['vs_lossless']}")  # fmt: skip
        common.write_part(part, rec)
        common.merge_results(summarize(rec))
        if name == "lossless" and args.save_ref:
            torch.save({"out": out, "lossless": result}, args.save_ref)

    if "lossless" in args.only and args.ref is None:
        record("lossless", run_guarded(rec, "lossless", lambda: time_variant(
            model, cond, uncond, args.device, compile, args.reps)))  # fmt: skip

    def quantize() -> int:
        pipeline.uncompile(model)  # quantize the plain modules; time_variant compiles them again
        if args.fp8_impl == "torchao":
            return fp8_candidates.apply_torchao_fp8(model, presets.is_fp8_target)
        return presets.apply_fp8(model, fast_accum=args.fp8_impl == "scaled_mm_fast")

    if "fp8" in args.only:

        def fp8() -> dict[str, Any]:
            seconds, rec["fp8_layers"] = common.time_call(quantize, args.device)
            log(f"fp8 ({args.fp8_impl}): {rec['fp8_layers']} linear layers quantized in {seconds:.1f} s")
            seconds, _ = common.time_call(lambda: dit.forward_ours(model, cond), args.device)
            rec["fp8_eager_first_forward_s"] = round(seconds, 2)
            log(f"fp8: first eager forward {seconds:.2f} s (one branch); compiling")
            return time_variant(model, cond, uncond, args.device, compile, args.reps)

        record(fp8_name, run_guarded(rec, fp8_name, fp8))
    fast = []  # the fast-attention variants asked for whose kernels import here
    for name, (_, module) in FAST_ATTENTION.items():
        if name in args.only and importlib.util.find_spec(module):
            fast.append(name)
        elif name in args.only:
            rec[f"{name}_skipped"] = f"{module} not importable"
    if fast:
        rec["attention_micro"] = run_guarded(rec, "attention_micro", lambda: attention_micro(
            args.size, args.device, args.tiny))  # fmt: skip
        log(f"attention: {rec['attention_micro']}")
    for name in fast:

        def fast_attention(name: str = name) -> dict[str, Any]:
            if "fp8_layers" not in rec:
                rec["fp8_layers"] = quantize()
            undo = fp8_candidates.route_attention(FAST_ATTENTION[name][0])
            try:
                return time_variant(model, cond, uncond, args.device, compile, args.reps)
            except Exception as exc:  # noqa: BLE001 - a kernel that does not trace: measure it eager
                rec[f"{name}_compile_error"] = f"{type(exc).__name__}: {exc}"[:400]
                pipeline.uncompile(model)
                return time_variant(model, cond, uncond, args.device, False, args.reps)
            finally:
                undo()

        record(record_name(fp8_name, name), run_guarded(rec, name, fast_attention))
    common.write_part(part, rec)
    common.merge_results(summarize(rec))
    log(f"done in {time.time() - started:.0f} s; {summarize(rec)}; errors: {rec.get('errors', {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
