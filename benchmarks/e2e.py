"""End to end: the real worker (`python -m worker`) on a real-size Wan2.2-T2V-A14B of random weights.

    python -m benchmarks.e2e build --dir outputs/e2e/model            # Diffusers folder, ~41 GB on disk
    python -m benchmarks.e2e run --model outputs/e2e/model --name 480p_4 --size 832*480 --steps 4

`build` makes the checkpoint in Diffusers format: both experts at the A14B config (bf16; `transformer_2/`
hard-links `transformer/`'s files, so the disk holds one copy; `--distinct-experts` copies them instead:
~70 GB, for loads from a cold disk), the UMT5-XXL encoder (bf16), the Wan VAE
(fp32), the UniPC flow scheduler, model_index.json with boundary_ratio 0.875, and the tiny model's
character tokenizer (the encoder still has the real 256,384-row vocabulary). Parameters are created on the
meta device and filled on the GPU (std 0.02), then saved with safetensors in <= 5 GB shards.

`run` writes a local run spec and runs the worker exactly as Batch does (SPEC_URI, OFFLOAD, COMPILE,
MODEL_CACHE_DIR), then reads the manifest and the worker's JSON log lines: load time, s/step, decode time,
peak GPU memory and host RSS. Each run merges its keys into results.json and writes e2e_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log

BOUNDARY_RATIO = 0.875
SHARD = "5GB"
BUILD_MARKER = "e2e-build.json"
BUILD_VERSION = 1
PROMPT = "A cat walks on the grass, realistic, golden hour, shallow depth of field"
NEGATIVE = "blurry, low quality, static, overexposed, subtitles, worst quality, JPEG artifacts"
# Wan-AI/Wan2.2-T2V-A14B-Diffusers scheduler/scheduler_config.json; every item overrides flow_shift.
SCHEDULER = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
)


# ---------------------------------------------------------------- build


def build_checkpoint(
    directory: Path, *, device: str, tiny: bool = False, distinct_experts: bool = False
) -> dict[str, Any]:
    """Write the random-weight checkpoint once; a finished folder (marker present) is reused."""
    directory = Path(directory)
    marker = directory / BUILD_MARKER
    wanted = {"version": BUILD_VERSION, "tiny": tiny, "distinct_experts": distinct_experts}
    if (
        marker.is_file()
        and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted
    ):
        log(f"checkpoint already built in {directory}")
        return json.loads(marker.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    record: dict[str, Any] = dict(wanted)
    _copy_index_and_tokenizer(directory)
    record["transformer_s"] = _timed(lambda: _save_transformer(directory, device, tiny, distinct_experts))
    record["text_encoder_s"] = _timed(lambda: _save_text_encoder(directory, device, tiny))
    record["vae_s"] = _timed(lambda: _save_vae(directory, device, tiny))
    from diffusers import UniPCMultistepScheduler

    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(directory / "scheduler")
    record["bytes"] = {
        d.name: sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        for d in sorted(directory.iterdir())
        if d.is_dir()
    }
    marker.write_text(json.dumps(record, indent=1))
    return record


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    common.free_memory()
    return round(time.perf_counter() - started, 2)


def _copy_index_and_tokenizer(directory: Path) -> None:
    """model_index.json (boundary_ratio 0.875, the A14B component classes) and the tokenizer, from the tiny
    model, which is built by the same diffusers classes."""
    import tempfile

    from worker.tiny_model import TINY_BOUNDARY_RATIO, ensure_tiny_model

    assert TINY_BOUNDARY_RATIO == BOUNDARY_RATIO
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ensure_tiny_model(Path(tmp) / "tiny")
        index = json.loads((tiny / "model_index.json").read_text())
        index["boundary_ratio"] = BOUNDARY_RATIO
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        shutil.copytree(tiny / "tokenizer", directory / "tokenizer")


def _save_transformer(directory: Path, device: str, tiny: bool, distinct: bool) -> None:
    from benchmarks import dit

    log("building the expert (A14B config) on the meta device, filling it on " + device)
    model = dit.build_ours(device, tiny=tiny)
    model.save_pretrained(directory / "transformer", max_shard_size=SHARD, safe_serialization=True)
    del model
    # The two experts differ only in their values; hard links keep one copy on disk and in the page cache.
    # A copy has its own inode, so a cold disk is read twice, as with a real checkpoint.
    (directory / "transformer_2").mkdir()
    for f in sorted((directory / "transformer").iterdir()):
        (shutil.copyfile if distinct else os.link)(f, directory / "transformer_2" / f.name)


def _save_text_encoder(directory: Path, device: str, tiny: bool) -> None:
    from benchmarks import vae_text

    log("building UMT5-XXL encoder")
    model = vae_text.build_umt5(device, tiny)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # `shared` and `encoder.embed_tokens` are one matrix, as in the real checkpoint
    model.save_pretrained(directory / "text_encoder", max_shard_size=SHARD)


def _save_vae(directory: Path, device: str, tiny: bool) -> None:
    from benchmarks import vae_text

    log("building the Wan VAE (fp32)")
    vae_text.build_vae(device, tiny).save_pretrained(directory / "vae")


def seed_hash_memo(model_dir: Path, cache_dir: Path, workers: int = 16) -> float:
    """Hash the weights in parallel and store them where the worker's cache looks (worker.checkpoints'
    memo), so each worker run does not spend ~40 s hashing 68 GB on one core. Returns seconds taken.

    The hashes are the real sha256 of each file; hard-linked files are read once.
    """
    from worker import checkpoints

    started = time.perf_counter()
    root = Path(model_dir).resolve()
    files = checkpoints.model_files(root)
    by_inode: dict[tuple[int, int], Path] = {}
    for f in files:
        st = f.stat()
        by_inode.setdefault((st.st_dev, st.st_ino), f)
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large buffers
        digests = dict(zip(by_inode, pool.map(checkpoints.sha256_file, by_inode.values()), strict=True))
    memo = {}
    for f in files:
        st = f.stat()
        memo[f.relative_to(root).as_posix()] = {
            "sha256": digests[(st.st_dev, st.st_ino)],
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    checkpoints.write_json_atomic(checkpoints._local_memo_path(Path(cache_dir), root), memo)
    return round(time.perf_counter() - started, 2)


# ---------------------------------------------------------------- run


def write_spec(
    work: Path,
    model_dir: Path,
    *,
    name: str,
    width: int,
    height: int,
    frames: int,
    steps: int,
    gpus: int = 1,
) -> Path:
    run_id = f"e2e-{name.replace('_', '-')}-20250101T000000Z-0000e2e0"
    spec = {
        "spec_version": 1,
        "run_id": run_id,
        "source": {"bucket": "local", "key": f"prompts/e2e-{name}.json", "etag": "e2e"},
        "model": {"id": str(Path(model_dir).resolve()), "revision": "random-weights"},
        "gpus": gpus,
        "items_per_job": 1,
        "items": [
            {
                "id": "p0000",
                "prompt": PROMPT,
                "negative_prompt": NEGATIVE,
                "seed": 42,
                "width": width,
                "height": height,
                "num_frames": frames,
                "fps": 16,
                "steps": steps,
                "guidance_scale": 4.0,
                "guidance_scale_2": 3.0,
                "flow_shift": 12.0,
            }
        ],
    }
    from wanbatch.spec import parse_spec

    parse_spec(json.dumps(spec))  # the worker would exit 64 on a bad spec; fail here instead
    shutil.rmtree(work, ignore_errors=True)  # a manifest left from an earlier run would skip the item
    work.mkdir(parents=True)
    path = work / "spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def run_worker(spec: Path, *, cache_dir: Path, env_extra: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """`python -m worker` in a child process; its exit code, wall time, JSON events and peak RSS."""
    repo = common.REPO_ROOT
    env = {**os.environ, "SPEC_URI": str(spec), "MODEL_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1",
           **env_extra}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo / "batch_image"), str(repo), env.get("PYTHONPATH")) if p
    )
    log_path = spec.parent / "worker.log"
    started = time.perf_counter()
    job_end_at = None
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        events = []
        assert proc.stdout is not None
        for line in proc.stdout:  # tee: the log comes back even if the run is cut short
            out.write(line)
            out.flush()
            print(line, end="", flush=True)
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
                if events[-1].get("event") == "job_end":
                    job_end_at = time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                proc.kill()
        code = proc.wait()
    wall = time.perf_counter() - started
    # ru_maxrss of the largest waited-for child, in KiB on Linux.
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / common.GIB
    return {
        "exit_code": code,
        "wall_s": round(wall, 2),
        # From the worker's job_end line to its exit: the interpreter's teardown, if any.
        "exit_after_job_end_s": None if job_end_at is None else round(wall - job_end_at, 2),
        "events": events,
        "child_peak_rss_gib": round(rss, 2),
    }


def summarize(run: dict[str, Any], manifest: dict[str, Any] | None, target_steps: int = 40) -> dict:
    """The numbers one run contributes: measured ones, and a labelled extrapolation to `target_steps`."""
    stats = next((e for e in run["events"] if e.get("event") == "render_stats"), {})
    out: dict[str, Any] = {
        "exit_code": run["exit_code"],
        "wall_s": run["wall_s"],
        "exit_after_job_end_s": run.get("exit_after_job_end_s"),
        "host_peak_rss_gib": stats.get("host_peak_rss_gib") or run["child_peak_rss_gib"],
        "peak_gpu_gib": stats.get("peak_gpu_gib"),
        "peak_gpu_reserved_gib": stats.get("peak_gpu_reserved_gib"),
        # How long the loop waited for the low-noise expert's background load (OFFLOAD=none).
        "background_waits_s": {
            e["event"]: e.get("waited_s")
            for e in run["events"]
            if e.get("event") == "expert_loaded" and "waited_s" in e
        },
    }
    if manifest is None:
        return out
    t, rt = manifest["timings"], manifest["runtime"]
    steps = t["step_s"]
    experts = expert_of_steps(manifest)
    # A step is a warm-up when it is its expert's first (compile, offload swap); the rest are steady.
    first = {experts.index(e) for e in set(experts)}
    steady = [s for i, s in enumerate(steps) if i not in first] or steps
    s_step = statistics.median(steady)
    warmup_extra = sum(steps[i] - s_step for i in first)
    other = run["wall_s"] - t["denoise_s"]  # start-up, hashing, load, text encode, decode, encode, writes
    out.update(
        offload=rt["offload"],
        compile=rt.get("compile"),
        attention=rt["attention_backend"],
        vae_tiling=rt["vae_tiling"],
        text_encoder_device=rt["text_encoder_device"],
        checkpoint_fetch_s=_r(t["checkpoint_fetch_s"]),
        load_s=_r(t["load_s"]),
        text_encode_s=_r(t["text_encode_s"]),
        denoise_s=_r(t["denoise_s"]),
        step_s=[_r(s) for s in steps],
        step_experts=experts,
        s_per_step=_r(s_step),
        warmup_extra_s=_r(warmup_extra),
        vae_decode_s=_r(t["vae_decode_s"]),
        encode_s=_r(t["encode_s"]),
        manifest_total_s=_r(t["total_s"]),
        video_bytes=manifest["output"]["bytes"],
        frame_count=manifest["output"]["frame_count"],
        gpu=manifest["hardware"]["gpu_name"],
        versions=manifest["versions"],
        extrapolated_steps=target_steps,
        # Extrapolation, labelled as such: everything but the loop, plus warm-up, plus N steady steps.
        extrapolated_s=_r(other + warmup_extra + target_steps * s_step),
    )
    return out


def expert_of_steps(manifest: dict[str, Any]) -> list[str]:
    """Which expert ran each step, from the scheduler the manifest records (as the worker's loop decides)."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler.from_config(manifest["scheduler_config"])
    sched.set_timesteps(manifest["steps"])
    boundary = manifest["boundary_ratio"] * sched.config.num_train_timesteps
    return ["high" if float(t) >= boundary else "low" for t in sched.timesteps]


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def result_keys(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """results.json keys for one run (the record with every number goes to e2e_<name>.json)."""
    keys = {f"e2e_{name}": {k: v for k, v in summary.items() if k not in ("versions",)}}
    if summary.get("exit_code") != 0 or "s_per_step" not in summary:
        return keys
    steps = len(summary["step_s"])
    size = name.split("_")[0]
    if "48gb" in name:
        keys.update(
            {
                f"peak_gib_{size}_48gb_mode": summary["peak_gpu_gib"],
                _48gb_key("host_rss_gib", size): summary["host_peak_rss_gib"],
                f"s_per_step_{size}_48gb_mode": summary["s_per_step"],
            }
        )
        if steps == summary["extrapolated_steps"]:
            keys[f"e2e_{size}_{steps}_steps_s_48gb_mode"] = summary["wall_s"]
        else:
            keys[f"e2e_{size}_{summary['extrapolated_steps']}_steps_s_48gb_mode_extrapolated"] = summary[
                "extrapolated_s"
            ]
        return keys
    if "fill" in name:  # a short run that only fills the caches for the next one: its own record only
        return keys
    if "warm" in name:  # a second run on the same machine: compile and FA4 caches filled by the first
        keys[f"e2e_{size}_{steps}_steps_s_warm_caches"] = summary["wall_s"]
        return keys
    if "colddisk" in name:  # weights read from the disk, not the page cache (run --drop-caches)
        keys[f"e2e_{size}_{steps}_steps_s_cold_disk"] = summary["wall_s"]
        keys[f"load_s_{size}_cold_disk"] = summary["load_s"]
        return keys
    keys[f"e2e_{size}_{steps}_steps_s"] = summary["wall_s"]
    keys[f"load_s_{size}"] = summary["load_s"]
    keys[f"s_per_step_{size}_e2e"] = summary["s_per_step"]
    keys[f"peak_gib_{size}_e2e"] = summary["peak_gpu_gib"]
    if steps != summary["extrapolated_steps"]:
        keys[f"e2e_{size}_{summary['extrapolated_steps']}_steps_s_extrapolated"] = summary["extrapolated_s"]
    return keys


def _48gb_key(prefix: str, size: str) -> str:
    """The issue's 48 GB-mode keys are the 720p run's (`host_rss_gib_48gb_mode`, `time_ratio_48gb_mode`);
    another size gets its own, so a 480p run does not overwrite them."""
    return f"{prefix}_48gb_mode" if size == "720p" else f"{prefix}_{size}_48gb_mode"


def time_ratio_keys(name: str, s_per_step: float, reference: tuple[float, str]) -> dict[str, Any]:
    """A 48 GB-mode run's steady step over the whole card's (`reference`: value and the key it came from)."""
    size = name.split("_")[0]
    key = _48gb_key("time_ratio", size)
    return {key: round(s_per_step / reference[0], 3), f"{key}_reference": reference[1]}


def _unconstrained_s_per_step(name: str) -> tuple[float, str] | None:
    """The same size's s/step with the whole card: an e2e run if one was recorded, else phase 1's compiled
    DiT step (the same CFG pair the worker runs)."""
    size = name.split("_")[0]
    path = common.results_path()
    results = json.loads(path.read_text()) if path.exists() else {}
    for key in (f"s_per_step_{size}_e2e", f"dit_{size}_cfg_step_s"):
        if results.get(key):
            return float(results[key]), key
    return None


def drop_weights_from_page_cache(model_dir: Path) -> str:
    """Make the worker read every weight file from the disk; how it was done (io_rates.drop_page_cache)."""
    from benchmarks.io_rates import drop_page_cache

    return ", ".join(sorted({drop_page_cache(f) for f in sorted(Path(model_dir).rglob("*.safetensors"))}))


def run_one(args: argparse.Namespace) -> int:
    from wanbatch.spec import parse_size

    width, height = parse_size(args.size)
    work = Path(args.work) / args.name
    spec = write_spec(work, Path(args.model), name=args.name, width=width, height=height, frames=args.frames,
                      steps=args.steps, gpus=args.gpus)  # fmt: skip
    env = {"OFFLOAD": args.offload, "COMPILE": args.compile, **dict(pair.split("=", 1) for pair in args.env)}
    if args.memory_fraction:
        env["WANBATCH_GPU_MEMORY_FRACTION"] = str(args.memory_fraction)
    cache = Path(args.work) / "cache"
    seeded = seed_hash_memo(Path(args.model), cache)
    page_cache = drop_weights_from_page_cache(Path(args.model)) if args.drop_caches else "as left"
    log(f"hash memo ready in {seeded} s; running the worker ({args.name})")
    run = run_worker(spec, cache_dir=cache, env_extra=env, timeout_s=args.timeout)
    manifests = sorted(work.rglob("*.manifest.json"))
    manifest = json.loads(manifests[0].read_text()) if manifests else None
    summary = summarize(run, manifest, target_steps=args.extrapolate_to)
    summary.update(env=env, hash_memo_s=seeded, size=args.size, frames=args.frames, steps=args.steps,
                   page_cache=page_cache)  # fmt: skip
    common.write_part(f"e2e_{args.name}", {**summary, "events": run["events"], "manifest": manifest})
    keys = result_keys(args.name, summary)
    reference = _unconstrained_s_per_step(args.name)
    if "48gb" in args.name and reference and summary.get("s_per_step"):
        keys.update(time_ratio_keys(args.name, summary["s_per_step"], reference))
    common.merge_results(keys)
    log(f"{args.name}: " + json.dumps({k: v for k, v in summary.items() if k != "versions"}))
    return 0 if run["exit_code"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the random-weight A14B checkpoint")
    b.add_argument("--dir", default="outputs/e2e/model")
    b.add_argument("--device", default="cuda")
    b.add_argument("--tiny", action="store_true", help="2-layer shapes, for a CPU check of this code")
    b.add_argument("--distinct-experts", action="store_true", help="copy transformer_2, not hard links")
    r = sub.add_parser("run", help="run the worker on it and record the numbers")
    r.add_argument("--model", default="outputs/e2e/model")
    r.add_argument("--work", default="outputs/e2e/runs")
    r.add_argument("--name", required=True, help="e.g. 480p_4, 720p_4_48gb (the size prefix names keys)")
    r.add_argument("--size", default="832*480")
    r.add_argument("--frames", type=int, default=81)
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--offload", default="auto")
    r.add_argument("--compile", default="auto")
    r.add_argument("--memory-fraction", type=float, default=None, help="simulate a smaller card")
    r.add_argument("--gpus", type=int, default=1, help="the spec's gpus: >1 renders with context parallelism")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="worker env; repeatable")
    r.add_argument("--extrapolate-to", type=int, default=40)
    r.add_argument("--drop-caches", action="store_true", help="weights read from the disk (name: *colddisk*)")
    r.add_argument("--timeout", type=float, default=540.0)
    args = parser.parse_args(argv)
    if args.cmd == "build":
        started = time.perf_counter()
        record = build_checkpoint(
            Path(args.dir), device=args.device, tiny=args.tiny, distinct_experts=args.distinct_experts
        )
        record["build_s"] = round(time.perf_counter() - started, 2)
        common.write_part("e2e_build", record)
        log("build: " + json.dumps(record))
        return 0
    return run_one(args)


if __name__ == "__main__":
    sys.exit(main())
