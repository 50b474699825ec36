"""Load Wan2.2's components and run our own denoising loop over them.

The loop matches `WanPipeline.__call__` step for step (same frames for the same inputs) but can start at
any step from a saved state and reports every step, which the pipeline's own call cannot do.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanbatch.spec import SpecItem
from worker.attention import pick_attention_backend, use_attention_backend
from worker.experts import (
    EXPERT_DTYPE,
    EXPERTS,
    MODEL_LOADING,
    ExpertSwap,
    expert_config,
    load_expert,
    load_expert_in_background,
)
from worker.offload import OffloadPlan, apply_plan, gpu_memory_fraction
from worker.presets import apply_fp8, apply_step_cache, check_quantization, check_step_cache
from worker.progress import emit

log = logging.getLogger(__name__)

TRANSFORMER_DTYPE = EXPERT_DTYPE  # experts and text encoder
VAE_DTYPE = torch.float32  # the Wan VAE decodes noticeably worse in half precision
MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens, as WanPipeline
HIGH_NOISE, LOW_NOISE = "high-noise", "low-noise"
# COMPILE: `regional` compiles each expert's repeated transformer block (torch.compile, fullgraph); `auto`
# does so on CUDA, falling back to eager if compiling fails; `none` stays eager. Measured on H200 (sm90):
# 1.10-1.24x per step at 720p, 1.17x at 480p, no farther from fp32 than eager (BENCHMARKS.md).
COMPILE_MODES = ("auto", "none", "regional")

# The UniPC scheduler's fields that change while it steps; everything else follows from set_timesteps.
SCHEDULER_STATE_FIELDS = (
    "model_outputs",
    "timestep_list",
    "lower_order_nums",
    "last_sample",
    "this_order",
    "_step_index",
    "_begin_index",
)


@dataclass
class LoadedPipeline:
    pipe: Any  # diffusers.WanPipeline holding the components
    device: str
    plan: OffloadPlan
    attention_backend: str
    compile_mode: str = "none"  # what runs: regional | none (after an `auto` fallback: none)
    compile_fallback: bool = False  # `auto`: a compile failure drops to eager instead of failing the item
    compile_error: str | None = None  # why `auto` fell back, for the logs
    quantization: str = "none"  # none | fp8 (worker.presets)
    step_cache: str = "none"  # none | taylorseer (worker.presets)
    swap: ExpertSwap | None = None  # OFFLOAD=swap: the one expert on the GPU, loaded from disk when needed
    transformer_config: Any = None  # the experts' shared config (read from disk when they are swapped)
    deferred: dict[str, Callable[[], Future]] = field(default_factory=dict)  # background loads to start
    loading: dict[str, Future] = field(default_factory=dict)  # experts still being read in the background
    _checked: set = field(default_factory=set)  # experts whose first compiled call succeeded

    @property
    def boundary_ratio(self) -> float | None:
        return self.pipe.config.boundary_ratio

    def expert(self, name: str) -> torch.nn.Module:
        """`transformer` (high noise) or `transformer_2` (low noise), on its device, ready to call."""
        if self.swap is not None:
            return self.swap.get(self.pipe, name)
        if name in self.deferred:
            self.start_deferred_loads()
        if name in self.loading:
            self._take_loaded(name)
        return getattr(self.pipe, name)

    def start_deferred_loads(self) -> None:
        """Start the background loads; the loop calls this after its first step. Until then the text
        encoder and the first step's compile would compete with the load for the GIL and the PCIe bus;
        afterwards the loop mostly waits for the GPU."""
        for name in list(self.deferred):
            self.loading[name] = self.deferred.pop(name)()

    def finish_loading(self) -> None:
        """Wait for the experts still loading (for whatever must see both, e.g. context parallelism)."""
        self.start_deferred_loads()
        for name in list(self.loading):
            self._take_loaded(name)

    def resident_experts(self) -> list[torch.nn.Module]:
        return [e for e in (self.pipe.transformer, self.pipe.transformer_2) if e is not None]

    def _take_loaded(self, name: str) -> None:
        started = time.perf_counter()
        expert = self.loading[name].result()  # a failed load raises here, for this item and every later one
        del self.loading[name]
        if expert is not None:
            prepare_expert(self, expert)
        self.pipe.register_modules(**{name: expert})
        emit("expert_loaded", expert=name, background=True, waited_s=round(time.perf_counter() - started, 3))


@dataclass
class DenoiseState:
    """Everything needed to continue denoising after `step` completed steps."""

    step: int
    latents: torch.Tensor
    scheduler: dict[str, Any]
    generator: torch.Tensor
    # Set when the tensors are still being copied from the GPU (capture_state): wait() before reading them.
    ready: torch.cuda.Event | None = field(default=None, repr=False, compare=False)

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()


@dataclass
class StepInfo:
    index: int  # 0-based index of the step just completed
    total: int
    expert: str
    seconds: float
    state: Callable[[], DenoiseState]  # snapshot on demand (copies to CPU)


@dataclass
class Render:
    frames: np.ndarray  # (frames, height, width, 3) float32 in [0, 1], as WanPipeline(output_type="np")
    start_step: int
    scheduler_config: dict
    timings: dict[str, Any] = field(default_factory=dict)


def pick_compile(requested: str, device: str, plan: OffloadPlan, step_cache: str = "none") -> str:
    """`regional` or `none`: what COMPILE means on this device with this offload plan and presets."""
    if requested not in COMPILE_MODES:
        raise ValueError(f"COMPILE must be one of {', '.join(COMPILE_MODES)}, got {requested!r}")
    if requested == "none" or device == "cpu" or not str(device).startswith("cuda"):
        return "none"  # CPU/MPS: compile costs more than it saves for one render
    if step_cache != "none":
        # The cache's hooks wrap each block with Python state (a graph break a fullgraph compile refuses);
        # on cached steps the blocks do not run at all, so there is little left to compile.
        return "none"
    if plan.offload in ("group", "sequential"):
        # Their hooks stream weights inside each block, which a fullgraph compile cannot trace, and the
        # transfers dominate the step anyway.
        return "none"
    return "regional"


def configure_compile_cache(model_cache_dir: Path, local_cache_dir: Path | None) -> Path:
    """Keep torch.compile's caches beside the model (NVMe tier if any, else EFS) unless set already.

    The first job on a fresh container compiles each expert's block for its frame size (~20 s at 720p);
    with the FX-graph/Triton caches on shared storage the next containers load the kernels instead (~4 s).
    FlashAttention-4's JIT-compiled kernels get flash-attn-4's own persistent cache on the NVMe tier only
    (off by default there; read when `flash_attn.cute` is first imported, which comes later): it guards
    entries with file locks that raise after 15 s, which a fleet starting at once could meet on EFS.
    """
    root = local_cache_dir or model_cache_dir
    if local_cache_dir is not None:
        os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
        os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(local_cache_dir / "flash-attn-cute"))
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "torch-compile")))


def load_pipeline(
    model_dir: Path,
    *,
    plan: OffloadPlan,
    attention: str = "auto",
    device: str | None = None,
    compile: str = "auto",
    quantization: str = "none",
    step_cache: str = "none",
):
    """Components from a Diffusers-format folder: bf16 experts and text encoder, fp32 VAE."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    # Progress bars are noise in CloudWatch; our own JSON lines report progress.
    diffusers_logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    compile_mode = pick_compile(compile, device, plan, step_cache)  # validate first
    check_quantization(quantization, device)
    check_step_cache(step_cache)
    fraction = gpu_memory_fraction()
    if fraction is not None and device.startswith("cuda"):
        # Benchmark hook: behave like a smaller card (choose_plan plans for the same fraction).
        index = torch.device(device).index  # torch wants an index; plain "cuda" means the current device
        torch.cuda.set_per_process_memory_fraction(
            fraction, torch.cuda.current_device() if index is None else index
        )
    backend = pick_attention_backend(attention, device)
    loaded = LoadedPipeline(
        pipe=None,
        device=device,
        plan=plan,
        attention_backend=backend,
        compile_mode=compile_mode,
        compile_fallback=compile == "auto",
        quantization=quantization,
        step_cache=step_cache,
        transformer_config=expert_config(model_dir),
    )
    with MODEL_LOADING:  # a background load still running from an earlier call finishes first
        _load_components(model_dir, loaded, plan)
    if plan.offload == "none":
        loaded.deferred["transformer_2"] = functools.partial(
            load_expert_in_background, model_dir, "transformer_2", device
        )
    return loaded


def _load_components(model_dir: Path, loaded: LoadedPipeline, plan: OffloadPlan) -> None:
    """`loaded.pipe`: the pipeline with the experts that load now, placed and prepared as `plan` says."""
    from diffusers import AutoencoderKLWan, WanPipeline

    device = loaded.device
    components: dict[str, Any] = {}
    if plan.offload == "swap":
        components = {name: None for name in EXPERTS}  # loaded one at a time by ExpertSwap
        loaded.swap = ExpertSwap(model_dir, device, lambda expert: prepare_expert(loaded, expert))
    elif plan.offload == "none":
        # Straight from the files onto the GPU: no host copy of the 2 x 27 GiB, no second pass to move it.
        # The low-noise expert is first needed after the high-noise steps (26 of 40 at the defaults), so it
        # is read in the background while those run, from the end of the first (LoadedPipeline.deferred).
        components = {"transformer": load_expert(model_dir, "transformer", device), "transformer_2": None}
        if plan.text_encoder_device == "gpu":
            components["text_encoder"] = load_text_encoder(model_dir, device)  # no stop in host memory
    vae = AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", dtype=VAE_DTYPE)
    pipe = WanPipeline.from_pretrained(model_dir, vae=vae, dtype=TRANSFORMER_DTYPE, **components)
    pipe.set_progress_bar_config(disable=True)
    loaded.pipe = pipe
    apply_plan(pipe, plan, device)
    for expert in loaded.resident_experts():
        prepare_expert(loaded, expert)


def load_text_encoder(model_dir: Path, device: str) -> torch.nn.Module:
    """UMT5 (bf16) read from its safetensors straight into `device` memory."""
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel.from_pretrained(
        model_dir, subfolder="text_encoder", dtype=TRANSFORMER_DTYPE, device_map={"": torch.device(device)}
    )


def prepare_expert(loaded: LoadedPipeline, expert: torch.nn.Module) -> None:
    """Attention backend, presets and compile for one expert (at load, or each time one is swapped in)."""
    use_attention_backend(expert, loaded.attention_backend)
    if loaded.quantization == "fp8":
        apply_fp8(expert)
    apply_step_cache(expert, loaded.step_cache)
    if loaded.compile_mode == "regional":
        # Lazy: the compile happens at each expert's first call (the first step's time shows it).
        expert.compile_repeated_blocks(fullgraph=True)


def uncompile(module: torch.nn.Module) -> None:
    """Undo `compile_repeated_blocks`: `nn.Module.compile` only sets `_compiled_call_impl`."""
    for sub in module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None


def run_expert(loaded: LoadedPipeline, model: torch.nn.Module, **inputs) -> torch.Tensor:
    """One expert forward; under COMPILE=auto a failing first compiled call falls back to eager."""
    key = id(model)
    if loaded.compile_mode != "regional" or key in loaded._checked or not loaded.compile_fallback:
        return model(**inputs, return_dict=False)[0]
    try:
        out = model(**inputs, return_dict=False)[0]
    except Exception as exc:  # noqa: BLE001 - inductor/dynamo raise many types; eager is the safe answer
        loaded.compile_error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("compile failed, running eager: %s", loaded.compile_error)
        for expert in loaded.resident_experts():
            uncompile(expert)
        loaded.compile_mode = "none"
        return model(**inputs, return_dict=False)[0]
    loaded._checked.add(key)
    return out


def predict_noise(
    loaded: LoadedPipeline,
    model: torch.nn.Module,
    branch: str,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    embeds: torch.Tensor,
) -> torch.Tensor:
    """One CFG branch, "cond" or "uncond": WanPipeline's context names, which a step cache keys on."""
    with torch.no_grad(), model.cache_context(branch):
        return run_expert(
            loaded, model, hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds
        )


def make_scheduler(pipe, flow_shift: float):
    """A fresh scheduler per item, with the item's flow shift (Wan's `shift`)."""
    return type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)


def capture_state(step: int, latents: torch.Tensor, scheduler, generator: torch.Generator) -> DenoiseState:
    """A host copy of the state after `step` steps, taken without stopping the GPU.

    GPU tensors are copied into pinned host memory on the current stream, behind the step that made them
    and ahead of the next one's kernels, so the loop goes on at once; `DenoiseState.wait` waits for the
    copies (the resume writer does, in its own thread). A blocking copy cost ~0.1 s per step at 720p.
    """
    gpu: torch.device | None = None  # the device copied from, if any

    def cpu(value):
        nonlocal gpu
        if isinstance(value, torch.Tensor):
            if value.device.type != "cuda":
                return value.detach().to("cpu", copy=True)
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value.detach(), non_blocking=True)
            gpu = value.device
            return host
        if isinstance(value, list):
            return [cpu(v) for v in value]
        return value

    fields = {name: cpu(getattr(scheduler, name)) for name in SCHEDULER_STATE_FIELDS}
    state = DenoiseState(step=step, latents=cpu(latents), scheduler=fields, generator=generator.get_state())
    if gpu is not None:
        state.ready = torch.cuda.Event()
        state.ready.record(torch.cuda.current_stream(gpu))
    return state


def _restore_scheduler(scheduler, saved: dict[str, Any], device) -> None:
    def to(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, list):
            return [to(v) for v in value]
        return value

    for name in SCHEDULER_STATE_FIELDS:
        setattr(scheduler, name, to(saved[name]))


def generate(
    loaded: LoadedPipeline,
    item: SpecItem,
    *,
    resume_from: DenoiseState | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    output_type: str = "np",
) -> Render:
    """Render one spec item; `resume_from` continues a saved state, `on_step` runs after every step."""
    pipe = loaded.pipe
    timings: dict[str, Any] = {}

    # 1. Check inputs: sizes must patchify exactly (WanPipeline would silently round them).
    config = loaded.transformer_config
    multiple = pipe.vae_scale_factor_spatial * config.patch_size[1]
    if item.width % multiple or item.height % multiple:
        raise ValueError(f"width and height must be multiples of {multiple}, got {item.width}x{item.height}")
    if (item.num_frames - 1) % pipe.vae_scale_factor_temporal:
        raise ValueError(f"num_frames must be {pipe.vae_scale_factor_temporal}k+1, got {item.num_frames}")
    # With swapped experts no hook names the GPU, and the encoder sits on the CPU: use the loader's device.
    device = pipe._execution_device if loaded.swap is None else torch.device(loaded.device)
    do_cfg = item.guidance_scale > 1.0  # as WanPipeline: decided by the first scale for both experts
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 2. Encode the prompt (and the negative prompt for classifier-free guidance).
    started = time.perf_counter()
    # TEXT_ENCODER_DEVICE=cpu keeps UMT5 off the GPU: encode where its weights are, then move the result.
    text_device = torch.device("cpu") if loaded.plan.text_encoder_device == "cpu" else device
    with torch.no_grad():
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=item.prompt,
            negative_prompt=item.negative_prompt,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=1,
            max_sequence_length=max_sequence_length,
            device=text_device,
        )
    transformer_dtype = TRANSFORMER_DTYPE
    prompt_embeds = prompt_embeds.to(device, transformer_dtype)
    negative_embeds = negative_embeds.to(device, transformer_dtype) if negative_embeds is not None else None
    timings["text_encode_s"] = time.perf_counter() - started

    # 3. Timesteps from a scheduler configured with the item's flow shift.
    scheduler = make_scheduler(pipe, item.flow_shift)
    scheduler.set_timesteps(item.steps, device=device)
    scheduler.set_begin_index(0)
    timesteps = scheduler.timesteps
    boundary = pipe.config.boundary_ratio
    boundary_timestep = boundary * scheduler.config.num_train_timesteps if boundary is not None else None

    # 4. Initial noise from a CPU generator seeded by the item, or the saved state.
    generator = torch.Generator("cpu").manual_seed(item.seed)
    in_channels = config.in_channels
    latents = pipe.prepare_latents(
        1, in_channels, item.height, item.width, item.num_frames, torch.float32, device, generator, None
    )
    start_step = 0
    if resume_from is not None:
        if resume_from.latents.shape != latents.shape:
            raise ValueError(
                f"saved latents have shape {tuple(resume_from.latents.shape)}, need {tuple(latents.shape)}"
            )
        latents = resume_from.latents.to(device=device, dtype=torch.float32)
        _restore_scheduler(scheduler, resume_from.scheduler, device)
        generator.set_state(resume_from.generator)
        start_step = resume_from.step

    # 5. Denoising loop: the high-noise expert above the boundary timestep, the low-noise one below.
    step_seconds: list[float] = []
    denoise_started = time.perf_counter()
    for i in range(start_step, len(timesteps)):
        step_started = time.perf_counter()
        t = timesteps[i]
        high = boundary_timestep is None or t >= boundary_timestep
        model = None  # with OFFLOAD=swap the old expert must be freed before the next one loads
        if high:
            model, guidance, expert = loaded.expert("transformer"), item.guidance_scale, HIGH_NOISE
        else:
            model, guidance, expert = loaded.expert("transformer_2"), item.guidance_scale_2, LOW_NOISE
        model_input = latents.to(transformer_dtype)
        timestep = t.expand(latents.shape[0])
        noise_pred = predict_noise(loaded, model, "cond", model_input, timestep, prompt_embeds)
        if do_cfg:
            noise_uncond = predict_noise(loaded, model, "uncond", model_input, timestep, negative_embeds)
            noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
        with torch.no_grad():
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest per-step timings
        step_seconds.append(time.perf_counter() - step_started)
        if on_step is not None:
            done, lat = i + 1, latents
            on_step(
                StepInfo(
                    index=i,
                    total=len(timesteps),
                    expert=expert,
                    seconds=step_seconds[-1],
                    state=lambda done=done, lat=lat: capture_state(done, lat, scheduler, generator),
                )
            )
        loaded.start_deferred_loads()
    timings["denoise_s"] = time.perf_counter() - denoise_started
    timings["step_s"] = step_seconds

    # 6. Decode with the fp32 VAE, un-normalising the latents as WanPipeline does.
    started = time.perf_counter()
    if loaded.swap is not None:
        model = None
        loaded.swap.release(pipe)  # the decode's activations get the expert's memory
    if output_type == "latent":
        frames = latents
    else:
        vae = pipe.vae
        latents = latents.to(_module_device(vae), dtype=vae.dtype)
        z_shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(z_shape).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(z_shape).to(latents.device, latents.dtype)
        with torch.no_grad():
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type=output_type)[0]
    timings["vae_decode_s"] = time.perf_counter() - started
    timings.update(memory_stats(device))
    emit("render_stats", item=item.id, compile=loaded.compile_mode, compile_error=loaded.compile_error,
         **{k: v for k, v in timings.items() if k != "step_s"})  # fmt: skip

    # 7. Free the offload hooks' GPU copies before the next item.
    pipe.maybe_free_model_hooks()
    return Render(
        frames=frames, start_step=start_step, scheduler_config=dict(scheduler.config), timings=timings
    )


def memory_stats(device: torch.device) -> dict[str, float | None]:
    """Peak GPU memory of this render (allocated and reserved, GiB) and the process's peak RSS so far."""
    stats: dict[str, float | None] = {"peak_gpu_gib": None, "peak_gpu_reserved_gib": None}
    if device.type == "cuda":
        stats["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        stats["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    stats["host_peak_rss_gib"] = host_peak_rss_gib()
    return stats


def host_peak_rss_gib() -> float | None:
    """VmHWM from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 2**30, 2)
    except OSError:
        pass
    return None


def _module_device(module) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)
