"""Fleet cold start (issue 9): N instances start together and each loads Wan2.2-T2V-A14B. Pure arithmetic.

    python -m benchmarks.fleet_sim              # prints the markdown table, merges keys into results.json
    python -m benchmarks.fleet_sim --no-write   # print only

For N in (1, 10, 100, 500), each model source and items per job it gives the time to first step (model
delivery + load into the GPU; container start, text encoding and compilation excluded) and the load cost
per video: transfer charges plus the Spot time the GPU instance waits for its loads, over the videos it
renders. Every number below is an ASSUMPTION (a field of Assumptions with its source), not a measurement;
the only measured input, the GPU load rate, is the `warm_load_gbps` key from benchmarks/io_rates.py.

Sources:
  efs-direct  every job loads from EFS (one client: ~1.5 GB/s; all clients share the file system's cap)
  efs-nvme    the first job per instance copies EFS -> instance NVMe (worker.local_tier), later jobs read NVMe
  s3-nvme     the first job per instance pulls the S3 mirror with parallel ranged GETs (worker.checkpoint_s3)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any

from wanbatch.packing import estimate_item_seconds, items_per_job
from wanbatch.spec import SpecItem

SOURCES = ("efs-direct", "efs-nvme", "s3-nvme")
FLEET_SIZES = (1, 10, 100, 500)
ITEMS_PER_JOB = (1, 4, 16)
RECOMMENDED_SOURCE = "s3-nvme"
GIB = 1024**3


@dataclass(frozen=True)
class Assumptions:
    # The bf16 cache (BENCHMARKS.md / issue 9): two 14B experts, UMT5-XXL text encoder, fp32 VAE.
    expert_gib: float = 26.8
    text_encoder_gib: float = 12.6
    vae_gib: float = 0.5
    # EFS Elastic throughput (AWS docs, approximate): ~1.5 GB/s read per client; the per-file-system read
    # ceiling is 20-60 GiB/s depending on the region: 20 GB/s assumed (the low end).
    efs_client_gbps: float = 1.5
    efs_aggregate_gbps: float = 20.0
    efs_read_usd_per_gb: float = 0.03
    # S3 in-region: no per-GB charge; GET $0.0004 per 1,000. One connection gives ~85-90 MB/s (AWS
    # performance guidance); the worker opens 32 (checkpoint_s3.MAX_CONCURRENCY) with 64 MiB ranges.
    # g6e.4xlarge: up to 20 Gbps = 2.5 GB/s (g6e.12xlarge: 100 Gbps).
    s3_nic_gbps: float = 2.5
    s3_connection_gbps: float = 0.088
    s3_connections: int = 32
    s3_part_mib: int = 64
    s3_get_usd_per_1000: float = 0.0004
    # S3 serves >= 5,500 GET/s per prefix before it partitions further; the model spans 4 folders.
    s3_prefix_gets_per_s: float = 5500.0
    s3_prefixes: int = 4
    # Instance-store NVMe (not measured on a g6e): 2 GB/s sequential write and read into the GPU. The
    # measured load into the GPU from a page-cached local file is warm_load_gbps (7.9 GB/s, H200 machine).
    nvme_write_gbps: float = 2.0
    nvme_load_gbps: float = 2.0
    # g6e.4xlarge Spot, the middle of README's $0.9-1.8/h.
    spot_usd_per_hour: float = 1.35
    # Workload: each instance renders this many 1280x720, 81-frame, 40-step videos (packing's estimate
    # per video: 2,490 s on one L40S); the job time limit is cdk.json's max_job_minutes default.
    videos_per_instance: int = 16
    max_job_minutes: float = 240.0

    @property
    def model_gb(self) -> float:
        return (2 * self.expert_gib + self.text_encoder_gib + self.vae_gib) * GIB / 1e9

    @property
    def s3_aggregate_gbps(self) -> float:
        return self.s3_prefix_gets_per_s * self.s3_prefixes * self.s3_part_mib * 2**20 / 1e9


@dataclass(frozen=True)
class Row:
    instances: int
    source: str
    items_per_job: int
    rate_gbps: float  # per instance, for the first (simultaneous) fetch
    time_to_first_step_s: float
    transfer_usd_per_video: float  # EFS read charges or S3 GETs
    waiting_usd_per_video: float  # Spot time spent loading, all of the instance's jobs
    gpu_usd_per_video: float  # the render itself

    @property
    def load_usd_per_video(self) -> float:
        return self.transfer_usd_per_video + self.waiting_usd_per_video

    @property
    def load_cost_share(self) -> float:
        return self.load_usd_per_video / self.gpu_usd_per_video


def reference_item() -> SpecItem:
    return SpecItem(id="p0000", prompt="x", negative_prompt="", seed=0, width=1280, height=720, num_frames=81,
                    fps=16, steps=40, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=12.0)  # fmt: skip


def packing_choice(a: Assumptions, instances: int) -> int:
    """What wanbatch.packing picks for a run of `videos_per_instance` videos per instance of the fleet."""
    return items_per_job(
        instances * a.videos_per_instance,
        est_seconds_per_item=estimate_item_seconds(reference_item()),
        max_job_minutes=a.max_job_minutes,
        parallel_slots=instances,
    )


def first_fetch_gbps(a: Assumptions, source: str, instances: int) -> float:
    """Per-instance rate when all `instances` fetch at once: the slowest of each path's limits."""
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    if source == "efs-direct":
        return min(a.efs_client_gbps, a.efs_aggregate_gbps / instances)
    if source == "efs-nvme":
        return min(a.efs_client_gbps, a.efs_aggregate_gbps / instances, a.nvme_write_gbps)
    if source == "s3-nvme":
        per_instance = min(a.s3_nic_gbps, a.s3_connections * a.s3_connection_gbps, a.nvme_write_gbps)
        return min(per_instance, a.s3_aggregate_gbps / instances)
    raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")


def simulate(a: Assumptions, instances: int, source: str, per_job: int) -> Row:
    if not 1 <= per_job <= a.videos_per_instance:
        raise ValueError(f"items per job must be in [1, {a.videos_per_instance}], got {per_job}")
    gb = a.model_gb
    jobs = math.ceil(a.videos_per_instance / per_job)  # each job (container) loads the model once
    rate = first_fetch_gbps(a, source, instances)
    if source == "efs-direct":
        first = gb / rate
        # Later jobs finish at different times, so their loads rarely overlap: one client's rate.
        later = gb / min(a.efs_client_gbps, a.efs_aggregate_gbps)
        transfer = jobs * gb * a.efs_read_usd_per_gb
    else:
        first = gb / rate + gb / a.nvme_load_gbps  # fetch to NVMe, then load from it
        later = gb / a.nvme_load_gbps
        if source == "efs-nvme":
            transfer = gb * a.efs_read_usd_per_gb
        else:
            transfer = math.ceil(gb * 1e9 / (a.s3_part_mib * 2**20)) * a.s3_get_usd_per_1000 / 1000
    waiting_s = first + (jobs - 1) * later
    per_video = a.videos_per_instance
    return Row(
        instances=instances,
        source=source,
        items_per_job=per_job,
        rate_gbps=rate,
        time_to_first_step_s=first,
        transfer_usd_per_video=transfer / per_video,
        waiting_usd_per_video=waiting_s / 3600 * a.spot_usd_per_hour / per_video,
        gpu_usd_per_video=estimate_item_seconds(reference_item()) / 3600 * a.spot_usd_per_hour,
    )


def table(a: Assumptions) -> list[Row]:
    rows = []
    for n in FLEET_SIZES:
        choices = sorted({*ITEMS_PER_JOB, packing_choice(a, n)})
        rows += [simulate(a, n, source, k) for source in SOURCES for k in choices]
    return rows


def markdown(a: Assumptions, rows: list[Row]) -> str:
    lines = [
        "| instances | source | items/job | GB/s per instance | time to first step | load $/video "
        "(transfer + waiting) | share of GPU $/video |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (packing)" if r.items_per_job == packing_choice(a, r.instances) else ""
        lines.append(
            f"| {r.instances} | {r.source} | {r.items_per_job}{mark} | {r.rate_gbps:.2f} | "
            f"{r.time_to_first_step_s:,.0f} s | ${r.load_usd_per_video:.3f} "
            f"(${r.transfer_usd_per_video:.3f} + ${r.waiting_usd_per_video:.3f}) | "
            f"{100 * r.load_cost_share:.1f} % |"
        )
    return "\n".join(lines)


def result_keys(a: Assumptions, rows: list[Row]) -> dict[str, Any]:
    """results.json keys: the recommended configuration at 100 instances, and each source beside it."""
    k = packing_choice(a, 100)
    at_100 = {r.source: r for r in rows if r.instances == 100 and r.items_per_job == k}
    return {
        "load_cost_share_100_instances": round(at_100[RECOMMENDED_SOURCE].load_cost_share, 4),
        "load_cost_share_100_instances_config": f"{RECOMMENDED_SOURCE}, items_per_job={k} (packing), "
        "g6e.4xlarge Spot, 1280x720 81 frames 40 steps",
        "load_cost_share_100_instances_by_source": {
            s: round(r.load_cost_share, 4) for s, r in at_100.items()
        },
        "load_usd_per_video_100_instances_by_source": {
            s: round(r.load_usd_per_video, 4) for s, r in at_100.items()
        },
        "time_to_first_step_100_instances_s_by_source": {
            s: round(r.time_to_first_step_s, 1) for s, r in at_100.items()
        },
        "fleet_sim_assumptions": {**asdict(a), "model_gb": round(a.model_gb, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave results.json alone")
    args = parser.parse_args(argv)
    a = Assumptions()
    rows = table(a)
    print(f"Model {a.model_gb:.1f} GB (2 x {a.expert_gib} GiB experts + {a.text_encoder_gib} GiB UMT5 + "
          f"{a.vae_gib} GiB VAE); {a.videos_per_instance} videos per instance\n")  # fmt: skip
    print(markdown(a, rows))
    keys = result_keys(a, rows)
    print(f"\nload_cost_share_100_instances = {keys['load_cost_share_100_instances']} "
          f"({keys['load_cost_share_100_instances_config']})")  # fmt: skip
    if not args.no_write:
        from benchmarks.common import merge_results, write_part

        merge_results(keys)
        write_part("fleet_sim", {"rows": [{**asdict(r), "load_usd_per_video": r.load_usd_per_video,
                                           "load_cost_share": r.load_cost_share} for r in rows],
                                 "markdown": markdown(a, rows), **keys})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
