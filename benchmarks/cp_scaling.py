"""Context parallelism on 1 vs 2 GPUs: one A14B DiT step (a CFG pair of forwards) at 720p.

Run on a machine with at least 2 GPUs (the issue asks for 2x H100):

    python -m benchmarks.cp_scaling            # drives torchrun for 1 and 2 GPUs, merges the results

Each GPU count runs as `torchrun --standalone --nproc_per_node N -m benchmarks.cp_scaling --rank-run`:
the real A14B transformer config with random bf16 weights (the same seed on every rank and for every N),
the same inputs, diffusers' `ContextParallelConfig(ulysses_degree=N)` exactly as the worker applies it
(worker.distributed.parallel_degrees). It records the step time, the scaling, the peak memory of every
GPU, and the largest difference of the 2-GPU output from the 1-GPU one (bf16 tolerance). Results: the full
record in `cp_scaling.json` beside the results file, and `cp_2gpu_speedup_720p` merged into
`benchmarks/results.json` (other keys kept). `--tiny` runs a small config for a quick check of the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import common, dit

SIZE = "720p"
# bf16 has 8 bits of mantissa: outputs of order 1 differ by a few 1e-2 when the sum order changes.
BF16_TOLERANCE = 0.1


def rank_run(args: argparse.Namespace) -> None:
    """One rank of one GPU count: time the CFG step, save rank 0's output and everyone's memory."""
    import torch.distributed as dist

    sys.path.insert(0, str(common.REPO_ROOT / "batch_image"))
    from worker.distributed import parallel_degrees

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    device = f"cuda:{local}"
    dist.init_process_group("nccl")
    model = dit.build_ours(device, tiny=args.tiny)  # same seed everywhere: identical weights
    mode = "single"
    if world > 1:
        from diffusers import ContextParallelConfig

        degrees = parallel_degrees(world, model.config.num_attention_heads)
        model.enable_parallelism(config=ContextParallelConfig(**degrees))
        mode = json.dumps(degrees)
    latents, timestep, cond = dit.make_inputs(SIZE, 1, device, args.tiny, seed=0)
    _, _, uncond = dit.make_inputs(SIZE, 1, device, args.tiny, seed=1)

    def step() -> torch.Tensor:
        return dit.cfg_step(model, (latents, timestep, cond), (latents, timestep, uncond))

    common.reset_peak(device)
    timing = common.timed_runs(step, device, args.warmup, args.reps)
    out = timing.pop("out")
    dist.barrier()
    peaks: list[Any] = [None] * world
    dist.all_gather_object(peaks, common.peak_gib(device))
    if rank == 0:
        torch.save(out.float().cpu(), Path(args.out) / f"out_{world}.pt")
        record = {"world_size": world, "mode": mode, "peak_gib_per_gpu": peaks, **timing}
        (Path(args.out) / f"rank_run_{world}.json").write_text(json.dumps(record, default=str))
    dist.destroy_process_group()


def launch(n: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               "-m", "benchmarks.cp_scaling", "--rank-run", "--out", str(out),
               "--warmup", str(args.warmup), "--reps", str(args.reps)]  # fmt: skip
    command += ["--tiny"] if args.tiny else []
    common.log(" ".join(command))
    subprocess.run(command, check=True, cwd=common.REPO_ROOT)
    return json.loads((out / f"rank_run_{n}.json").read_text())


def summarize(one: dict[str, Any], two: dict[str, Any], diff: dict[str, float]) -> dict[str, Any]:
    """Scaling of the median step time; the 2-GPU output's distance from the 1-GPU one."""
    speedup = one["median_s"] / two["median_s"]
    return {
        "size": SIZE,
        "step": "CFG pair of DiT forwards (A14B config, random bf16 weights)",
        "one_gpu": one,
        "two_gpu": two,
        "speedup": round(speedup, 3),
        "scaling_efficiency": round(speedup / 2, 3),
        "vs_one_gpu": diff,
        "within_bf16_tolerance": diff["max_abs_diff"] <= BF16_TOLERANCE and diff["finite"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-run", action="store_true", help="internal: one torchrun rank")
    parser.add_argument("--out", default=None, help="internal: where ranks leave their results")
    parser.add_argument("--tiny", action="store_true", help="a small config: checks the plumbing only")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rank_run:
        rank_run(args)
        return 0
    if torch.cuda.device_count() < 2:
        raise SystemExit(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory(prefix="cp-scaling-") as tmp:
        out = Path(tmp)
        one, two = launch(1, args, out), launch(2, args, out)
        diff = dit.compare(torch.load(out / "out_2.pt"), torch.load(out / "out_1.pt"))
    record = {"machine": common.machine_facts(), "tiny": args.tiny, **summarize(one, two, diff)}
    common.write_part("cp_scaling", record)
    if not args.tiny:
        common.merge_results({"cp_2gpu_speedup_720p": record["speedup"]})
    common.log(json.dumps({k: record[k] for k in ("speedup", "scaling_efficiency", "vs_one_gpu")}))
    return 0 if record["within_bf16_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
