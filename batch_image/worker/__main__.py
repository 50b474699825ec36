"""`python -m worker`: environment in (contract 5), exit code out (0, 64, 75 or 1)."""

from __future__ import annotations

import logging
import sys
import time

from wanbatch.errors import ConfigError, InterruptedRender, SpecError, TransientError
from worker import facts
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
    try:
        settings = Settings.from_env()
        imds = facts.Imds()
        interrupts = Interrupts(imds, poll_s=settings.spot_poll_s)
        interrupts.install(poll_spot=imds.instance().lifecycle == "spot")
        if settings.warm_model:
            from worker.warm import run_warm

            code = run_warm(settings.warm_model, cache_dir=settings.model_cache_dir)
        else:
            spec, items, storage = load_chunk(settings)
            emit("job_start", run_id=spec.run_id, index=settings.array_index, attempt=settings.attempt,
                 items=[i.id for i in items])  # fmt: skip
            code = run_chunk(Context(settings, spec, storage, interrupts, container_started=started), items)
    except (SpecError, ConfigError) as exc:
        emit("bad_input", message=str(exc))
        if settings is not None and isinstance(exc, SpecError):
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
    emit("job_end", exit_code=code, seconds=round(time.perf_counter() - started, 3))
    return code


def _best_effort(fn, *args) -> None:
    """Writing the error record must not turn exit 64 into something else."""
    try:
        fn(*args)
    except Exception as exc:  # the record is a courtesy; the exit code is the contract
        emit("error_record_failed", type=type(exc).__name__, message=str(exc))


if __name__ == "__main__":
    sys.exit(main())
