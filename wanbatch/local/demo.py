"""`make demo`: the whole system on this machine, no AWS account and no GPU.

moto stands in for S3, Batch and DynamoDB; the real submit handler takes the real-shaped S3 event for
examples/demo_prompts.json; the local executor runs the submitted job's children (`python -m worker`)
with the tiny random-weight Wan2.2-shaped model; videos and manifests land in outputs/<run_id>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("prompt_file", nargs="?", type=Path, default=REPO / "examples" / "demo_prompts.json")
    parser.add_argument("--outputs", type=Path, default=REPO / "outputs")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="tiny model and model cache")
    args = parser.parse_args(argv)

    from worker.tiny_model import ensure_tiny_model  # torch import: after argument errors

    from wanbatch.local.flow import run_local_flow

    started = time.perf_counter()
    model_dir = ensure_tiny_model(args.cache / "tiny-wan")
    print(f"tiny model: {model_dir} ({time.perf_counter() - started:.1f} s)")
    result = run_local_flow(args.prompt_file, model_dir=model_dir, cache_dir=args.cache / "models",
                            outputs=args.outputs)

    print(f"\nrun {result.run_id} (Batch job {result.job_name})")
    print(f"  items: {len(result.videos)} video(s), {len(result.errors)} error(s), "
          f"{len(result.children)} child job(s), {result.seconds:.1f} s")
    for path in result.videos + result.manifests + result.errors:
        print(f"  {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0 if result.videos and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
