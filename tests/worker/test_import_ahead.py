"""worker.import_ahead: the first step's heavy imports run in a thread beside the weight reads."""

from __future__ import annotations

import sys

import pytest
from worker import attention
from worker.import_ahead import COMPILE_MODULES, FA4_MODULES, import_ahead, modules_to_import


@pytest.mark.parametrize(
    ("backend", "compile_mode", "expected"),
    [
        ("fa4", "regional", FA4_MODULES + COMPILE_MODULES),  # H100/H200 defaults
        ("native", "regional", COMPILE_MODULES),  # L40S
        ("native", "none", ()),  # CPU: nothing to import ahead
    ],
)
def test_only_what_the_first_step_will_import(backend, compile_mode, expected):
    assert modules_to_import(backend, compile_mode) == expected


def test_modules_are_imported_in_a_thread_and_a_failure_stays_there(tmp_path, monkeypatch):
    (tmp_path / "ahead_probe.py").write_text("import threading\nTHREAD = threading.current_thread().name\n")
    (tmp_path / "ahead_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ahead_probe", raising=False)

    thread = import_ahead(("ahead_broken", "ahead_probe"))
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert sys.modules["ahead_probe"].THREAD == "import-ahead"  # the broken one did not stop the next
    assert "ahead_broken" not in sys.modules  # its error surfaces at the real import, not here
    with pytest.raises(RuntimeError, match="broken on import"):
        __import__("ahead_broken")


def test_finding_a_submodule_does_not_import_its_package(tmp_path, monkeypatch):
    package = tmp_path / "heavy_pkg" / "sub"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "interface.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert attention._installed("heavy_pkg.sub.interface")
    assert attention._installed("heavy_pkg.sub")
    assert not any(name.startswith("heavy_pkg") for name in sys.modules)
    assert not attention._installed("heavy_pkg.sub.missing")
    assert not attention._installed("no_such_pkg.sub")
    assert attention._installed("json")
