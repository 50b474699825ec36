"""Import what the first step will need (FA4's front end, inductor) in a thread while the weights are read.

Measured on the H200 (BENCHMARKS.md, 480p end to end): ~14 s of a 21 s model load was Python imports, one
after the other and between the weight reads, ~7 s of them for flash-attn-4's CuTe DSL front end and
torch.compile's machinery. The weight reads wait on copies with the GIL released, so those imports can run
beside them. Only packages the load itself does not import go here: two threads importing the same
package tree could meet in a circular import and get a half-initialized module. Whatever fails to import
here is left alone: the real import later raises it where it matters.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

FA4_MODULES = ("worker.fa4_compat",)  # flash_attn.cute and the CuTe DSL (~2.8 s)
# torch.compile imports the first at `compile_repeated_blocks` (~1.3 s), the second at its first call (~2.7 s)
COMPILE_MODULES = ("torch._dynamo.repro.after_dynamo", "torch._inductor.compile_fx")


def modules_to_import(attention_backend: str, compile_mode: str) -> tuple[str, ...]:
    """The modules the first step will import that the load itself does not."""
    modules: tuple[str, ...] = ()
    if attention_backend == "fa4":
        modules += FA4_MODULES
    if compile_mode == "regional":
        modules += COMPILE_MODULES
    return modules


def import_ahead(modules: tuple[str, ...]) -> threading.Thread:
    """Start importing `modules` in a daemon thread; join it when the load is done."""
    thread = threading.Thread(target=_import_all, args=(modules,), name="import-ahead", daemon=True)
    thread.start()
    return thread


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure resurfaces at the real import
            log.debug("import ahead of %s failed: %s", name, exc)
