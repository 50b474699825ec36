"""`make demo`: run the job worker on examples/demo_spec.json with the tiny random-weight model on the CPU.

The example spec names the sentinel model `wanbatch/tiny-wan`; the demo writes a resolved copy of it to
`outputs/<run_id>/spec.json` with the tiny model's local folder (built once into `.cache/tiny-wan`), then
runs `python -m worker` on that copy, so videos and manifests land in `outputs/<run_id>/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_SENTINEL = "wanbatch/tiny-wan"


def resolved_spec(example: Path, tiny_dir: Path) -> dict:
    """The example spec with the sentinel model replaced by the tiny model's folder."""
    spec = json.loads(example.read_text())
    if spec["model"]["id"] == TINY_SENTINEL:
        spec["model"]["id"] = str(tiny_dir)
    return spec


def run_demo(
    *,
    example: Path = ROOT / "examples" / "demo_spec.json",
    outputs: Path = ROOT / "outputs",
    cache: Path = ROOT / ".cache" / "tiny-wan",
) -> Path:
    """Render the example; returns the run folder. Raises CalledProcessError if the worker fails."""
    sys.path.insert(0, str(ROOT / "batch_image"))
    from worker.tiny_model import ensure_tiny_model

    tiny_dir = ensure_tiny_model(cache)
    spec = resolved_spec(example, tiny_dir)
    run_dir = outputs / spec["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    env = {
        **os.environ,
        "SPEC_URI": str(run_dir / "spec.json"),
        "AWS_BATCH_JOB_ARRAY_INDEX": "0",
        "AWS_EC2_METADATA_DISABLED": "true",  # a laptop has no instance metadata: do not wait for it
        "MODEL_CACHE_DIR": str(cache.parent / "models"),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "batch_image"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    subprocess.run([sys.executable, "-m", "worker"], env=env, check=True)
    return run_dir


def main() -> int:
    started = time.perf_counter()
    run_dir = run_demo()
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s:", file=sys.stderr)
    for path in sorted(run_dir.glob("*.mp4")) + sorted(run_dir.glob("*.manifest.json")):
        print(f"  {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
