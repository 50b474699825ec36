"""benchmarks/image_only: the e2e benchmark hides only packages the job image does not have."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hidden() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "benchmarks" / "image_only" / "sitecustomize.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "HIDDEN":
            return ast.literal_eval(node.value)
    raise AssertionError("sitecustomize.py defines no HIDDEN")


def test_hidden_packages_are_not_in_the_image():
    requirements = (ROOT / "batch_image" / "requirements.txt").read_text().splitlines()
    pinned = {re.split(r"==", line)[0].lower().replace("_", "-") for line in requirements if "==" in line}
    hidden = _hidden()
    assert hidden and "peft" in hidden
    assert not {name.lower().replace("_", "-") for name in hidden} & pinned


def test_run_e2e_puts_the_folder_on_the_path():
    assert 'PYTHONPATH="$PWD/benchmarks/image_only:' in (ROOT / "benchmarks" / "run_e2e.sh").read_text()
