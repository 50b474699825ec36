"""`python -m worker`: environment in (contract 5), exit code out (0, 64, 75 or 1).

A spec with `gpus` N > 1 makes this process a launcher of N ranks (worker.distributed) whose exit code
is rank 0's; each rank runs this same module with WORLD_SIZE/RANK/LOCAL_RANK set.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from wanbatch.errors import ConfigError, InterruptedRender, SpecError, TransientError
from worker import distributed, facts
from worker.interrupts import Interrupts
from worker.job import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_RETRY,
    Context,
    bad_input_record,
    load_chunk,
    run_chunk,
)
from worker.progress import emit
from worker.settings import Settings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    settings: Settings | None = None
    interrupts: Interrupts | None = None
    launch = distributed.Launch()
    # Until Interrupts (or the rank launcher) takes over, a stop while the spec is read is still a retry.
    signal.signal(signal.SIGTERM, _stopped_early)
    try:
        settings = Settings.from_env()
        launch = distributed.Launch.from_env()
        if settings.warm_model:
            from worker.warm import run_warm

            code = run_warm(
                settings.warm_model, cache_dir=settings.model_cache_dir, s3_mirror=settings.s3_mirror
            )
        else:
            spec, items, storage = load_chunk(settings)
            distributed.check_gpus(spec.gpus, launch, distributed.visible_gpus())
            if distributed.needs_launcher(spec.gpus, launch):
                return _end(distributed.run_ranks(spec.gpus), started)
            imds = facts.Imds()
            interrupts = Interrupts(imds, poll_s=settings.spot_poll_s)
            # Rank 0 watches for the Spot notice; a stop reaches the others as SIGTERM from the launcher.
            interrupts.install(poll_spot=launch.is_writer and imds.instance().lifecycle == "spot")
            if not launch.is_writer:
                storage = distributed.ReadOnlyStorage(storage, launch.rank)
            emit("job_start", run_id=spec.run_id, index=settings.array_index, attempt=settings.attempt,
                 items=[i.id for i in items], rank=launch.rank, world_size=launch.world_size)  # fmt: skip
            ctx = Context(settings, spec, storage, interrupts, container_started=started, launch=launch)
            with distributed.process_group(launch):
                code = run_chunk(ctx, items)
    except (SpecError, ConfigError) as exc:
        emit("bad_input", message=str(exc))
        if settings is not None and isinstance(exc, SpecError) and launch.is_writer:
            _best_effort(bad_input_record, settings, exc)
        code = EXIT_BAD_INPUT
    except (InterruptedRender, TransientError) as exc:
        emit("retry_later", type=type(exc).__name__, message=str(exc))
        code = EXIT_RETRY
    except Exception as exc:
        logging.getLogger("worker").exception("job failed")
        emit("job_failed", type=type(exc).__name__, message=str(exc))
        code = EXIT_FAILED
    finally:
        if interrupts is not None:
            interrupts.uninstall()
        # The outcome is decided (videos and records written): a stop now must not turn it into a crash.
        signal.signal(signal.SIGTERM, _stopped_after_the_end)
    return _end(code, started, rank=launch.rank)


def _stopped_early(signum: int, _frame) -> None:
    raise InterruptedRender(signal.Signals(signum).name.lower(), step=None)


def _stopped_after_the_end(signum: int, _frame) -> None:
    emit("stop_ignored", signal=signal.Signals(signum).name.lower(), reason="the job has finished")


def _end(code: int, started: float, **fields) -> int:
    emit("job_end", exit_code=code, seconds=round(time.perf_counter() - started, 3), **fields)
    return code


def _best_effort(fn, *args) -> None:
    """Writing the error record must not turn exit 64 into something else."""
    try:
        fn(*args)
    except Exception as exc:  # the record is a courtesy; the exit code is the contract
        emit("error_record_failed", type=type(exc).__name__, message=str(exc))


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: every write is done by now, and the teardown
    (inductor's compile workers, FlashAttention-4's and CUDA's caches, tens of GiB of tensors freed one by
    one) kept a GPU container alive for seconds after job_end."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
