# The 3-step probe behind BENCHMARKS.md "Fourth session" (a record of what ran, not part of the suite):
# VARIANT=<name> WARM=<1|0> python3 benchmarks/raw/h200_bgload/probe.py on the GPU machine, after
# `python3 -m benchmarks.e2e build`, PYTHONPATH=batch_image:. and the carried wheels (BENCHMARKS.md).
# WARM=1 passed the items' sizes to a load_pipeline that then compiled FA4's kernels in a thread
# (removed afterwards: it was slower). Separate compile caches per variant keep the e2e runs cold.
import json, os, sys, time
T_START = time.perf_counter()
V = os.environ.get("VARIANT", "a")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"/tmp/smoke_inductor_{V}"
os.environ["TRITON_CACHE_DIR"] = f"/tmp/smoke_triton_{V}"
sys.path[:0] = ["batch_image", "."]
from pathlib import Path
import torch
from worker.offload import OffloadPlan
from worker.pipeline import generate, load_pipeline
from wanbatch.spec import SpecItem
t0 = time.perf_counter()
plan = OffloadPlan("none", "gpu", False, "smoke")
loaded = load_pipeline(Path("outputs/e2e/model"), plan=plan, device="cuda", sizes=[(832, 480, 81)] if os.environ.get("WARM", "1") == "1" else [])
t1 = time.perf_counter()
print(V, "imports_s", round(t0 - T_START, 2), "load_s", round(t1 - t0, 2), "deferred", list(loaded.deferred), flush=True)
item = SpecItem(id="p0", prompt="a cat", negative_prompt="", seed=1, width=832, height=480, num_frames=81, fps=16,
                steps=3, guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=5.0)
steps = []
r = generate(loaded, item, output_type="latent", on_step=lambda i: steps.append((i.expert, round(i.seconds, 2))))
print(V, "steps", steps, "text_s", round(r.timings["text_encode_s"], 2), "finite", bool(torch.isfinite(r.frames).all()), "total", round(time.perf_counter() - t0, 2))
print(json.dumps(torch.cuda.memory_stats()["allocated_bytes.all.peak"] / 2**30))
