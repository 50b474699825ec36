"""One array child: render its chunk of spec items, loading the model once.

Per item: skip when its manifest exists; resume a saved state; render; encode; upload the video, then
the manifest; remove any earlier error record and the resume state. A final failure writes
`<item>.error.json`; an interruption (SIGTERM, Spot notice, throttled S3) writes none and exits 75.
On several GPUs (worker.distributed) every rank renders; rank 0 alone decides and writes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanbatch import layout
from wanbatch.errors import InterruptedRender, SpecError, TransientError
from wanbatch.manifest import Manifest
from wanbatch.spec import RunSpec, SpecItem, parse_spec
from worker import distributed, facts
from worker.checkpoints import ensure_model
from worker.interrupts import Interrupts
from worker.offload import Footprint, choose_plan
from worker.pipeline import (
    MAX_SEQUENCE_LENGTH,
    TRANSFORMER_DTYPE,
    VAE_DTYPE,
    configure_compile_cache,
    generate,
    load_pipeline,
)
from worker.progress import ItemProgress, emit, utcnow
from worker.resume import ResumeStore, spec_hash
from worker.settings import Settings
from worker.storage import Storage, read_spec, run_storage
from worker.video import CODEC, PIX_FMT, encode_mp4, probe, to_uint8

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RETRY = 0, 1, 64, 75


@dataclass
class Context:
    """What every item of the chunk shares: the run, the loaded model and the facts about this machine."""

    settings: Settings
    spec: RunSpec
    storage: Storage
    interrupts: Interrupts
    container_started: float
    model: Any = None  # ResolvedModel
    loaded: Any = None  # LoadedPipeline
    setup_s: dict[str, float | None] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    items_in_chunk: int = 1
    launch: distributed.Launch = field(default_factory=distributed.Launch)
    context_parallel: str | None = None  # e.g. "ulysses:4" once enabled on the experts


def load_chunk(settings: Settings) -> tuple[RunSpec, list[SpecItem], Storage]:
    """Spec, this child's items and the run's storage; SpecError (exit 64) for bad input."""
    spec = parse_spec(read_spec(settings.spec_uri))
    storage = run_storage(settings.spec_uri, spec.run_id)
    return spec, spec.chunk(settings.array_index), storage


def write_error(
    storage: Storage, key: str, exc: BaseException, *, step: int | None, attempt: int, code: int
) -> None:
    record = {
        "type": type(exc).__name__,
        "message": str(exc),
        "step": step,
        "attempt": attempt,
        "exit_code": code,
        "written_by": "job",
        "at": utcnow(),
    }
    storage.write(key, json.dumps(record, indent=2).encode(), "application/json")


def run_chunk(ctx: Context, items: list[SpecItem]) -> int:
    """Render the pending items; the exit code of the chunk."""
    spec, storage, launch = ctx.spec, ctx.storage, ctx.launch
    pending = []
    if launch.is_writer:
        for item in items:
            if storage.exists(layout.manifest_key(spec.run_id, item.id)):
                emit("skipped", run_id=spec.run_id, item=item.id, reason="manifest exists")
            else:
                pending.append(item)
    # Every rank must render the same items in the same order: rank 0's list is the list.
    pending_ids = distributed.from_writer(launch, [item.id for item in pending])
    pending = [item for item in items if item.id in pending_ids]
    if not pending:
        return EXIT_OK
    ctx.items_in_chunk = len(items)
    try:
        _prepare(ctx, pending)
    except (InterruptedRender, TransientError):
        raise
    except Exception as exc:  # no item can render: each gets its record before the job exits 1
        if not launch.is_writer:
            raise
        with ctx.interrupts.held():
            for item in pending:
                key = layout.error_key(spec.run_id, item.id)
                write_error(storage, key, exc, step=None, attempt=ctx.settings.attempt, code=EXIT_FAILED)
        raise
    failed = False
    for item in pending:
        ctx.interrupts.check()
        try:
            render_item(ctx, item) if launch.is_writer else follow_item(ctx, item)
        except (InterruptedRender, TransientError):
            raise
        except Exception as exc:  # recorded per item; the chunk goes on, then exits 1
            failed = True
            emit("item_failed", run_id=spec.run_id, item=item.id, type=type(exc).__name__, message=str(exc))
        distributed.barrier(launch)  # the next item starts together (rank 0 was encoding and uploading)
    return EXIT_FAILED if failed else EXIT_OK


def _prepare(ctx: Context, pending: list[SpecItem]) -> None:
    """Fetch and load the model once for the whole chunk; gather the machine's facts once."""
    s, launch = ctx.settings, ctx.launch
    started = time.perf_counter()
    if not launch.is_writer:
        distributed.barrier(launch)  # rank 0 fills or verifies the cache first; the others then find it ready
    ctx.model = ensure_model(
        ctx.spec.model.id,
        ctx.spec.model.revision,
        cache_dir=s.model_cache_dir,
        local_cache_dir=s.local_cache_dir,
        s3_mirror=s.s3_mirror,
    )
    if launch.is_writer:
        distributed.barrier(launch)
    ctx.setup_s["checkpoint_fetch_s"] = time.perf_counter() - started
    emit("model_ready", repo_id=ctx.model.repo_id, commit=ctx.model.commit, source=ctx.model.source)

    gpu = facts.gpu()
    largest = max(pending, key=lambda i: i.width * i.height * i.num_frames)
    plan = choose_plan(
        gpu_total_bytes=gpu["gpu_memory_bytes"],
        # Every rank holds its own copy of the experts: each plans with its share of the host's memory.
        host_ram_bytes=facts.host_ram_bytes() // launch.world_size,
        width=largest.width,
        height=largest.height,
        frames=largest.num_frames,
        footprint=_footprint(ctx.model.files),
        offload=s.offload,
        text_encoder_device=s.text_encoder_device,
    )
    started = time.perf_counter()
    configure_compile_cache(s.model_cache_dir, s.local_cache_dir)
    ctx.loaded = load_pipeline(
        ctx.model.path,
        plan=plan,
        attention=s.attention_backend,
        compile=s.compile_mode,
        device=launch.device(),
        quantization=s.quantization,
        step_cache=s.step_cache,
    )
    ctx.context_parallel = distributed.enable_context_parallel(
        ctx.loaded, launch, compile_requested=s.compile_mode
    )
    ctx.setup_s["load_s"] = time.perf_counter() - started
    emit("model_loaded", offload=plan.offload, reason=plan.reason, attention=ctx.loaded.attention_backend)
    if not launch.is_writer:
        return  # the machine's facts only go into manifests, which rank 0 writes

    imds = ctx.interrupts.imds or facts.Imds()
    instance = imds.instance()
    price, price_source = facts.price_per_hour(instance)
    ctx.machine = {
        "gpu": gpu,
        "instance": instance,
        "price": price,
        "price_source": price_source,
        "versions": facts.versions(),
        "queue_wait_s": facts.queue_wait_s(),
    }


def _footprint(files) -> Footprint:
    """Component sizes from the weight files when they are known (else the A14B estimates)."""
    sizes: dict[str, int] = {}
    for f in files:
        sizes[f.path.split("/")[0]] = sizes.get(f.path.split("/")[0], 0) + f.bytes
    if not sizes.get("transformer"):
        return Footprint()
    return Footprint(
        expert=sizes["transformer"], text_encoder=sizes.get("text_encoder", 0), vae=sizes.get("vae", 0)
    )


def render_item(ctx: Context, item: SpecItem) -> None:
    s, spec, storage = ctx.settings, ctx.spec, ctx.storage
    item_started = time.perf_counter()
    progress = ItemProgress(storage, spec.run_id, item.id, item.steps, s.attempt, s.progress_every_steps)
    store = ResumeStore(
        storage,
        spec.run_id,
        item.id,
        spec_hash(spec.run_id, spec.model.id, spec.model.revision, ctx.model.commit, item),
        item.steps,
    )
    saved = store.load()
    # The other ranks continue from the same state (or all start at step 0).
    distributed.from_writer(ctx.launch, saved.state if saved else None)
    start_step = saved.state.step if saved else 0
    attempts = [*(saved.attempts if saved else []), {"attempt": s.attempt, "start_step": start_step,
                                                      "started_at": utcnow()}]  # fmt: skip
    emit("item_start", run_id=spec.run_id, item=item.id, attempt=s.attempt, start_step=start_step)
    with ctx.interrupts.held():
        progress.write(state="starting", step=start_step)

    last = {"step": start_step, "saved_at": time.monotonic(), "unsaved": None}

    def on_step(info) -> None:
        last["step"] = info.index + 1
        with ctx.interrupts.held():
            due = (
                time.monotonic() - last["saved_at"] >= s.resume_save_interval_s
                or info.index + 1 == info.total
            )
            if due:
                store.save_in_background(info.state(), attempts)  # written while the next step runs
                last["saved_at"], last["unsaved"] = time.monotonic(), None
            else:
                last["unsaved"] = info.state()
            progress.step(info.index, info.expert, info.seconds)
        if s.test_step_delay_s:
            time.sleep(s.test_step_delay_s)  # tests only (WANBATCH_TEST_STEP_DELAY): a window to kill in

    try:
        render = generate(ctx.loaded, item, resume_from=saved.state if saved else None, on_step=on_step)
        with ctx.interrupts.held():
            store.flush()  # the last step's state: a failed write fails the item before anything is published
            manifest = _publish(ctx, item, render, attempts, item_started)
    except (InterruptedRender, TransientError) as exc:
        with ctx.interrupts.held():
            store.close()  # the state written in the background lands before the newer one below
            if last["unsaved"] is not None:
                store.save(last["unsaved"], attempts)
            progress.write(state="interrupted", step=last["step"], reason=str(exc))
        if isinstance(exc, InterruptedRender):
            exc.step = last["step"]
        emit("item_interrupted", run_id=spec.run_id, item=item.id, step=last["step"], reason=str(exc))
        raise
    except Exception as exc:
        with ctx.interrupts.held():
            store.close()
            write_error(
                storage,
                layout.error_key(spec.run_id, item.id),
                exc,
                step=last["step"],
                attempt=s.attempt,
                code=EXIT_FAILED,
            )
            progress.write(state="failed", step=last["step"])
        raise
    with ctx.interrupts.held():
        storage.delete(layout.error_key(spec.run_id, item.id))
        store.clear()
        store.close()
        progress.write(state="done", step=item.steps)
    emit(
        "item_done",
        run_id=spec.run_id,
        item=item.id,
        key=manifest.output.key,
        seconds=manifest.timings.total_s,
    )


def follow_item(ctx: Context, item: SpecItem) -> None:
    """A non-zero rank: the same render as rank 0 (CP's collectives need every rank), no decode, no writes."""
    resume_from = distributed.from_writer(ctx.launch, None)
    generate(ctx.loaded, item, resume_from=resume_from, output_type="latent")


def _publish(ctx: Context, item: SpecItem, render, attempts: list[dict], item_started: float) -> Manifest:
    """Encode, upload the video, then the manifest (last: its presence means the item is done)."""
    spec, storage = ctx.spec, ctx.storage
    with tempfile.TemporaryDirectory(prefix="wanbatch-") as tmp:
        path = Path(tmp) / f"{item.id}.mp4"
        started = time.perf_counter()
        encode_mp4(to_uint8(render.frames), path, item.fps)
        encode_s = time.perf_counter() - started
        info = probe(path)
        data = path.read_bytes()
        video_key = layout.video_key(spec.run_id, item.id)
        started = time.perf_counter()
        storage.upload(video_key, path, "video/mp4")
        upload_s = time.perf_counter() - started

    total_s = time.perf_counter() - item_started
    manifest = build_manifest(
        ctx,
        item,
        render,
        attempts,
        output={
            "key": video_key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "frame_count": info.frame_count,
            "width": info.width,
            "height": info.height,
            "fps": item.fps,
            "codec": CODEC,
            "pix_fmt": info.pix_fmt or PIX_FMT,
        },
        timings={"encode_s": encode_s, "upload_s": upload_s, "total_s": total_s},
    )
    storage.write(layout.manifest_key(spec.run_id, item.id), manifest.to_json().encode(), "application/json")
    return manifest


def build_manifest(
    ctx: Context, item: SpecItem, render, attempts, *, output: dict, timings: dict
) -> Manifest:
    loaded, model, machine = ctx.loaded, ctx.model, ctx.machine
    instance = machine["instance"]
    # This item's wall time plus an equal share of the chunk's one-off setup (fetch and load).
    setup = sum(v or 0.0 for v in ctx.setup_s.values())
    billed = timings["total_s"] + setup / ctx.items_in_chunk
    price = machine["price"]
    return Manifest(
        run_id=ctx.spec.run_id,
        item_id=item.id,
        prompt=item.prompt,
        negative_prompt=item.negative_prompt,
        seed=item.seed,
        width=item.width,
        height=item.height,
        num_frames=item.num_frames,
        fps=item.fps,
        steps=item.steps,
        guidance_scale=item.guidance_scale,
        guidance_scale_2=item.guidance_scale_2,
        boundary_ratio=loaded.boundary_ratio,
        flow_shift=render.scheduler_config["flow_shift"],
        scheduler=type(loaded.pipe.scheduler).__name__,
        scheduler_config=json.loads(json.dumps(render.scheduler_config, default=str)),
        model={
            "repo_id": model.repo_id,
            "revision": model.revision,
            "commit": model.commit,
            "source": model.source,
            "files": [
                {"path": f.path, "sha256": f.sha256, "bytes": f.bytes, "source_sha256": f.source_sha256}
                for f in model.files
            ],
        },
        runtime={
            "device": loaded.device,
            "dtype": {
                "transformer": str(TRANSFORMER_DTYPE).removeprefix("torch."),
                "transformer_2": str(TRANSFORMER_DTYPE).removeprefix("torch."),
                "text_encoder": str(loaded.pipe.text_encoder.dtype).removeprefix("torch."),
                "vae": str(VAE_DTYPE).removeprefix("torch."),
            },
            "quantization": None if loaded.quantization == "none" else loaded.quantization,
            "step_cache": None if loaded.step_cache == "none" else loaded.step_cache,
            "offload": loaded.plan.offload,
            "offload_reason": loaded.plan.reason,
            "text_encoder_device": loaded.plan.text_encoder_device,
            "vae_tiling": loaded.plan.vae_tiling,
            "attention_backend": loaded.attention_backend,
            "compile": loaded.compile_mode,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "gpus": ctx.launch.world_size,
            "context_parallel": ctx.context_parallel,
        },
        versions=machine["versions"],
        hardware={
            **machine["gpu"],
            "instance_type": instance.instance_type,
            "lifecycle": instance.lifecycle,
            "availability_zone": instance.availability_zone,
        },
        timings={
            "queue_wait_s": machine["queue_wait_s"],
            "checkpoint_fetch_s": ctx.setup_s.get("checkpoint_fetch_s"),
            "load_s": ctx.setup_s.get("load_s"),
            "text_encode_s": render.timings.get("text_encode_s"),
            "denoise_s": render.timings.get("denoise_s"),
            "step_s": render.timings.get("step_s", []),
            "vae_decode_s": render.timings.get("vae_decode_s"),
            **timings,
        },
        attempts=attempts,
        output=output,
        cost={
            "usd": round(price * billed / 3600.0, 6) if price is not None else None,
            "price_per_hour_usd": price,
            "price_source": machine["price_source"],
            "billed_seconds": billed,
            "items_sharing_setup": ctx.items_in_chunk,
        },
        created_at=utcnow(),
    )


def bad_input_record(settings: Settings, exc: SpecError) -> None:
    """Exit 64 before the items are known: a record for the child, runs/<run_id>/child-<index>.error.json."""
    if settings.spec_uri is None:
        return
    try:
        raw = json.loads(read_spec(settings.spec_uri))
        run_id = raw.get("run_id") if isinstance(raw, dict) else None
    except (SpecError, ValueError):
        run_id = None
    # Contract 2 puts the spec at runs/<run_id>/spec.json, so its folder names the run.
    run_id = run_id if isinstance(run_id, str) and run_id else Path(settings.spec_uri).parent.name
    storage = run_storage(settings.spec_uri, run_id)
    write_error(
        storage,
        layout.child_error_key(run_id, settings.array_index),
        exc,
        step=None,
        attempt=settings.attempt,
        code=EXIT_BAD_INPUT,
    )
