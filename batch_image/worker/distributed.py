"""One item across several GPUs: the launch, the process group, rank helpers and context parallelism.

Launch. `python -m worker` with a spec whose `gpus` is N > 1 starts N copies of itself (one per GPU, the
environment torchrun would set: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) and exits with rank 0's
code, so Batch still sees contract 5's 0/64/75/1. torchrun also works (the ranks are the same code), but
torchrun exits 1 whenever any rank fails, so under it Batch cannot tell 75 (retry) from 1 (give up).

Ranks. Every rank loads both experts and runs the same denoising loop on the same inputs (the spec item,
a CPU generator seeded by it, rank 0's resume state); diffusers' context parallelism splits each expert's
token sequence across the ranks and gathers the output, so every rank ends each step with the same
latents. Rank 0 alone writes (video, manifest, progress, resume state, error records); the other ranks
render without decoding and wait at a barrier after every item.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from wanbatch.errors import SpecError
from worker.progress import emit

RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long (rank 0 encodes and uploads between items)
STOP_GRACE_S = 25.0  # Batch kills 30 s after its SIGTERM; ranks get most of that to save their state
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RETRY = 1, 64, 75


@dataclass(frozen=True)
class Launch:
    """Where this process sits: `launched` is True when a launcher (ours or torchrun) started it."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    launched: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Launch:
        present = [name for name in RANK_ENV if env.get(name)]
        timeout_raw = env.get("WORKER_DIST_TIMEOUT_S", "").strip()
        try:
            timeout_s = float(timeout_raw) if timeout_raw else DEFAULT_TIMEOUT_S
        except ValueError:
            raise SpecError(f"WORKER_DIST_TIMEOUT_S must be a number, got {timeout_raw!r}") from None
        if not present:
            return cls(timeout_s=timeout_s)
        if len(present) != len(RANK_ENV):
            raise SpecError(f"set all of {', '.join(RANK_ENV)} or none of them (got {', '.join(present)})")
        try:
            world, rank, local = (int(env[name]) for name in RANK_ENV)
        except ValueError:
            raise SpecError(f"{', '.join(RANK_ENV)} must be integers") from None
        if world < 1 or not 0 <= rank < world or not 0 <= local < world:
            raise SpecError(f"inconsistent launch: WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local}")
        return cls(world_size=world, rank=rank, local_rank=local, launched=True, timeout_s=timeout_s)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> str | None:
        """The GPU this rank owns; None (the loader's default) on one process or on CPU."""
        import torch

        if not self.distributed or not torch.cuda.is_available():
            return None
        return f"cuda:{self.local_rank}"


def check_gpus(spec_gpus: int, launch: Launch, visible_gpus: int | None) -> None:
    """The spec's `gpus` against this launch and this machine; SpecError (exit 64) when they disagree."""
    if launch.launched and spec_gpus != launch.world_size:
        raise SpecError(
            f"the spec asks for {spec_gpus} GPU(s) but {launch.world_size} rank(s) were launched: "
            "the job definition and the spec disagree"
        )
    if visible_gpus and spec_gpus > visible_gpus:
        raise SpecError(
            f"the spec asks for {spec_gpus} GPU(s) but this job sees {visible_gpus}: "
            "submit it to the job definition for that many GPUs"
        )


def needs_launcher(spec_gpus: int, launch: Launch) -> bool:
    return spec_gpus > 1 and not launch.launched


def visible_gpus() -> int | None:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else None


# --- the launcher: N ranks of `python -m worker`, rank 0's exit code ---------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(base: Mapping[str, str], *, world: int, rank: int, port: int) -> dict[str, str]:
    # The ranks share the host's cores (CPU text encoder, VAE on CPU, tests): split them, as torchrun does.
    threads = base.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // world))
    return {
        **base,
        "OMP_NUM_THREADS": threads,
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def job_exit_code(
    codes: list[int | None], *, stopped_by_launcher: set[int], first_failure: int | None
) -> int:
    """Rank 0's own code; when the launcher had to stop rank 0 (another rank failed), that rank's code.

    A rank killed by a signal (negative code: OOM killer, SIGKILL) is a plain failure (1).
    """
    own = codes[0]
    if own is not None and 0 not in stopped_by_launcher:
        return own if own in (0, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RETRY) else EXIT_FAILED
    failed = codes[first_failure] if first_failure is not None else own
    return failed if failed in (EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RETRY) else EXIT_FAILED


def run_ranks(
    nproc: int,
    *,
    env: Mapping[str, str] | None = None,
    grace_s: float = STOP_GRACE_S,
    poll_s: float = 0.1,
    argv: list[str] | None = None,
) -> int:
    """Start `nproc` ranks and wait for them; SIGTERM/SIGINT are passed on to every rank."""
    port = free_port()
    base = dict(os.environ if env is None else env)
    command = argv or [sys.executable, "-m", "worker"]
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    # Installed before the ranks start: a stop that arrives while they start must reach them all.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    for rank in range(nproc):
        procs.append(subprocess.Popen(command, env=rank_env(base, world=nproc, rank=rank, port=port)))
        for signum in received:  # a rank started after the stop still gets it
            procs[-1].send_signal(signum)
    emit("ranks_started", world_size=nproc, pids=[p.pid for p in procs], master_port=port)
    stopped: set[int] = set()
    first_failure: int | None = None
    deadline: float | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if first_failure is None:
                first_failure = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
            if deadline is None and (codes[0] is not None or first_failure is not None):
                # Rank 0 is done, or a rank failed: the others cannot go on without it. Rank 0 finished
                # cleanly means the rest are past their last barrier, so they get the whole grace.
                clean = codes[0] == 0 and first_failure is None
                for rank, proc in enumerate(procs):
                    if not clean and proc.poll() is None:
                        stopped.add(rank)
                        proc.send_signal(signal.SIGTERM)  # rank 0 saves its resume state and exits
                deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                for rank, proc in enumerate(procs):
                    if proc.poll() is None:
                        stopped.add(rank)
                        proc.kill()
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [p.returncode for p in procs]
    code = job_exit_code(codes, stopped_by_launcher=stopped, first_failure=first_failure)
    emit("ranks_ended", exit_codes=codes, exit_code=code)
    return code


# --- inside a rank: the process group and its collectives ---------------------------------------------


@contextmanager
def process_group(launch: Launch) -> Iterator[None]:
    """NCCL on CUDA (each rank on GPU LOCAL_RANK), gloo on CPU; nothing for a single process."""
    import torch
    import torch.distributed as dist

    if not launch.distributed:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timedelta(seconds=launch.timeout_s),
    )
    emit("process_group", backend=backend, rank=launch.rank, world_size=launch.world_size)
    yield
    # Only after a clean run: with a rank gone, tearing NCCL down can hang, and exiting frees it anyway.
    dist.destroy_process_group()


def barrier(launch: Launch) -> None:
    if launch.distributed:
        import torch.distributed as dist

        dist.barrier()


def from_writer(launch: Launch, value: Any) -> Any:
    """Rank 0's `value` on every rank (pending items, the resume state): one decision, taken once."""
    if not launch.distributed:
        return value
    import torch.distributed as dist

    box = [value if launch.is_writer else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ReadOnlyStorage:
    """A non-zero rank's view of the run: reads pass through, any write is a bug and fails loudly."""

    def __init__(self, storage, rank: int):
        self._storage, self.rank = storage, rank
        self.blocked: list[str] = []

    def read(self, key: str) -> bytes:
        return self._storage.read(key)

    def exists(self, key: str) -> bool:
        return self._storage.exists(key)

    def uri(self, key: str) -> str:
        return self._storage.uri(key)

    def _refuse(self, key: str, *_args, **_kwargs) -> None:
        self.blocked.append(key)
        raise PermissionError(f"rank {self.rank} must not write {key}: only rank 0 writes")

    write = upload = delete = _refuse


# --- context parallelism on both experts ------------------------------------------------------------


def parallel_degrees(world_size: int, heads: int) -> dict[str, Any]:
    """Ulysses over all ranks when they divide the heads (A14B: 40); else its uneven variant."""
    if world_size < 2:
        raise ValueError(f"context parallelism needs at least 2 ranks, got {world_size}")
    if heads % world_size == 0:
        return {"ulysses_degree": world_size}
    return {"ulysses_degree": world_size, "ulysses_anything": True}


def describe(degrees: dict[str, Any]) -> str:
    kind = "ulysses-anything" if degrees.get("ulysses_anything") else "ulysses"
    return f"{kind}:{degrees['ulysses_degree']}"


def enable_context_parallel(loaded, launch: Launch, *, compile_requested: str = "auto") -> str | None:
    """Split both experts' sequences across the ranks; what was applied (for the manifest), or None.

    diffusers 0.42.1 places each rank on `rank % accelerator count`, so it cannot run on a CPU: there the
    ranks render the whole sequence each (same result, no speed-up) and the tests still cover the rest.
    """
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    if not launch.distributed:
        return None
    if not str(loaded.device).startswith("cuda"):
        emit("context_parallel", enabled=False, reason=f"device {loaded.device} (diffusers needs GPUs)")
        return None
    loaded.finish_loading()  # both experts get the parallel config, so both must be here
    experts = loaded.resident_experts()
    _use_cp_attention(loaded, experts)
    if loaded.compile_mode == "regional" and compile_requested == "auto":
        # Regional compile with CP's collectives inside the blocks was not measured: `auto` stays eager.
        from worker.pipeline import uncompile

        for expert in experts:
            uncompile(expert)
        loaded.compile_mode = "none"
    degrees = parallel_degrees(launch.world_size, experts[0].config.num_attention_heads)
    config = ContextParallelConfig(**degrees)
    mesh = init_device_mesh("cuda", config.mesh_shape, mesh_dim_names=config.mesh_dim_names)
    for expert in experts:
        # One mesh (one set of communicators) for both experts; each gets its own config object.
        expert.enable_parallelism(config=ContextParallelConfig(**degrees, mesh=mesh))
    applied = describe(degrees)
    emit("context_parallel", enabled=True, mode=applied, attention=loaded.attention_backend)
    return applied


def _use_cp_attention(loaded, experts) -> None:
    """`_flash_3` (local FA3) has no CP kernel in diffusers 0.42.1: use FA2 if installed, else SDPA."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from worker.attention import diffusers_backend, fa2_installed

    backend = loaded.attention_backend
    name = AttentionBackendName(diffusers_backend(backend))
    if _AttentionBackendRegistry._is_context_parallel_available(name):
        return
    fallback = "flash" if fa2_installed() else "native"
    for expert in experts:
        expert.set_attention_backend(fallback)
    emit("attention_backend_changed", requested=backend, used=fallback, reason="context parallelism")
    loaded.attention_backend = fallback
