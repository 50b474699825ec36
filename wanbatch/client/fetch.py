"""Download a run's videos and manifests (and error records, so a partial run explains itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanbatch import layout
from wanbatch.client.runs import load_spec, run_objects

SUFFIXES = (".mp4", ".manifest.json", ".error.json")


@dataclass
class FetchPlan:
    """What to download (name -> bytes) and what is already here with the same size."""

    to_download: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.to_download.values())


def plan_fetch(s3: Any, bucket: str, run_id: str, destination: Path, *, force: bool = False) -> FetchPlan:
    load_spec(s3, bucket, run_id)  # RunNotFoundError for a wrong id, rather than "nothing to fetch"
    plan = FetchPlan()
    for name, size in sorted(run_objects(s3, bucket, run_id).items()):
        if "/" in name or not name.endswith(SUFFIXES):
            continue
        local = destination / name
        # Videos and manifests never change once written, so a same-size file is the same file.
        if (
            not force
            and local.is_file()
            and local.stat().st_size == size
            and not name.endswith(".error.json")
        ):
            plan.up_to_date.append(name)
        else:
            plan.to_download[name] = size
    return plan


def download(
    s3: Any, bucket: str, run_id: str, destination: Path, plan: FetchPlan,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> list[Path]:  # fmt: skip
    """Download the plan's files into `destination` (each to a temp name, then renamed)."""
    destination.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in plan.to_download:
        target = destination / name
        partial = target.with_name(f".{target.name}.part")
        s3.download_file(bucket, layout.run_prefix(run_id) + name, str(partial), Callback=on_bytes)
        partial.replace(target)
        paths.append(target)
    return paths
