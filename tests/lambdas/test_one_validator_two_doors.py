"""One validator, two front doors: the rejection record and `wanbatch validate` say the same thing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.lambdas.conftest import FakeAws, s3_event
from wanbatch.cli.main import main

BAD = {
    "defaults": {"size": "640*480"},
    "prompts": ["ok", {"prompt": "x", "stepz": 3}, {"id": "a/b", "prompt": " ", "seed": 2**32}, 7],
}


def test_cli_prints_the_rejection_records_messages(
    aws: FakeAws, lambda_context, tmp_path: Path, capsys
) -> None:
    from lambdas.submit.handler import handler

    key = "prompts/bad batch.json"
    etag = aws.put(key, json.dumps(BAD))
    handler(s3_event(key, etag), lambda_context)
    record = aws.get_json(f"rejected/{key}.error.json")
    capsys.readouterr()

    path = tmp_path / "bad batch.json"
    path.write_text(json.dumps(BAD))
    assert main(["validate", str(path)]) == 1
    printed = capsys.readouterr().err.splitlines()

    assert printed[0] == f"{path}: 6 error(s)" and record["error_count"] == 6
    assert printed[1:] == record["messages"]


def test_lambda_code_imports_nothing_beyond_the_powertools_layer() -> None:
    # The Lambda asset holds lambdas/ and wanbatch/ only; its dependencies come from the layer and runtime.
    code = (
        "import sys, lambdas.submit.handler, lambdas.failures.handler\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'huggingface_hub', 'numpy', 'moto', 'worker'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
