"""Fixtures for the CDK tests. Synthesis through jsii takes seconds, so each test module
synthesizes once (module-scoped fixtures) and its tests assert on the same template.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import stacks.bundling


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout with a stub Dockerfile and the clutter that must never reach an asset.

    `build` mode needs batch_image/Dockerfile; pointing the bundles here keeps these tests independent
    of the real image and lets them check what staging leaves out.
    """
    root = tmp_path_factory.mktemp("repo")
    files = {
        "batch_image/Dockerfile": "FROM public.ecr.aws/docker/library/python:3.11-slim\n",
        "batch_image/worker/__main__.py": "",
        "wanbatch/__init__.py": "",
        "lambdas/submit/handler.py": "def handler(event, context): ...\n",
        "lambdas/failures/handler.py": "def handler(event, context): ...\n",
        "pyproject.toml": "[project]\nname = 'wanbatch'\n",
        "README.md": "",
        ".venv/lib/big.so": "x",
        ".git/HEAD": "ref",
        "node_modules/aws-cdk/index.js": "",
        "cdk.out/old.json": "{}",
        "outputs/video.mp4": "",
        ".cache/hf/blob": "",
        "tests/test_x.py": "",
        "wanbatch/__pycache__/x.cpython-311.pyc": "",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacks.bundling, "REPO_ROOT", root)
        yield root
