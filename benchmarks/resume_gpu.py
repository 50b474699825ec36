"""Spot resume on a GPU: interrupt after every step of a 6-step schedule, resume from the saved state
(through bytes on disk, as a retried container reads it), and compare with the uninterrupted render.

On the CPU the tiny model resumes bit-identically (tests/worker/test_resume.py); on a GPU, kernels may
choose differently between processes, so this records the PSNR and max abs difference per interruption
step. Tiny model (the real architecture's loop, schedule, experts and scheduler history), CUDA, bf16.

    python -m benchmarks.resume_gpu            # ~1 min on a GPU machine
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from worker.offload import OffloadPlan
from worker.pipeline import generate, load_pipeline
from worker.resume import ResumeStore, spec_hash
from worker.storage import LocalStorage
from worker.tiny_model import ensure_tiny_model

from benchmarks.common import merge_results
from wanbatch.errors import InterruptedRender
from wanbatch.spec import SpecItem

RUN_ID = "resume-gpu"


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of frames in [0, 1]; None when they are identical (infinite PSNR)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="resume-gpu-"))
    model_dir = ensure_tiny_model(work / "tiny-wan")
    encoder_device = "gpu" if args.device == "cuda" else "cpu"
    plan = OffloadPlan("none", encoder_device, False, "benchmark: all on one device")
    # Eager: the device minutes left did not cover compile warm-ups; resume does not depend on it.
    loaded = load_pipeline(model_dir, plan=plan, device=args.device, compile="none")
    item = SpecItem(id="r", prompt="A cat walks on the grass", negative_prompt="blurry", seed=7, width=832,
                    height=480, num_frames=5, fps=16, steps=args.steps, guidance_scale=4.0,
                    guidance_scale_2=3.0, flow_shift=12.0)
    reference = generate(loaded, item).frames
    again = generate(loaded, item).frames
    rows = []
    for stop_after in range(1, args.steps + 1):
        store = ResumeStore(LocalStorage(work / f"s{stop_after}", RUN_ID), RUN_ID, item.id,
                            spec_hash(RUN_ID, "tiny", "main", None, item), item.steps)

        def on_step(info, store=store, stop_after=stop_after):
            store.save(info.state(), [{"attempt": 1, "start_step": 0}])
            if info.index + 1 == stop_after:
                raise InterruptedRender("benchmark", step=stop_after)

        try:
            generate(loaded, item, on_step=on_step)
        except InterruptedRender:
            pass
        saved = store.load()
        resumed = generate(loaded, item, resume_from=saved.state).frames
        rows.append({
            "stop_after": stop_after,
            "bit_identical": bool(np.array_equal(resumed, reference)),
            "max_abs": float(np.abs(resumed - reference).max()),
            "psnr_db": psnr(resumed, reference),
        })
        print(rows[-1], flush=True)
    result = {
        "resume_gpu_card": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "resume_gpu_rerun_bit_identical": bool(np.array_equal(again, reference)),
        "resume_gpu_all_bit_identical": all(r["bit_identical"] for r in rows),
        # None: every resumed render was identical to the uninterrupted one.
        "resume_gpu_min_psnr_db": min((r["psnr_db"] for r in rows if r["psnr_db"] is not None), default=None),
        "resume_gpu_rows": rows,
    }
    print(result, flush=True)
    merge_results(result)


if __name__ == "__main__":
    main()
