"""batch_image/compose.yaml: the image on a local GPU box, as the original docker compose deployment ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "batch_image" / "compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_builds_the_job_image_from_the_repo_root(services: dict) -> None:
    build = services["worker"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file() and (context / "wanbatch").is_dir()
    assert services["worker"]["image"].startswith("${WANBATCH_IMAGE:-")  # MODE=pull: set a registry image


def test_worker_reserves_a_gpu(services: dict) -> None:
    [device] = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1


def test_model_cache_and_outputs_are_host_volumes(services: dict) -> None:
    for name in ("worker", "warm"):
        service = services[name]
        targets = {volume.rsplit(":", 1)[1]: volume for volume in service["volumes"]}
        assert set(targets) == {"/mnt/models", "/outputs"}
        assert targets["/mnt/models"].startswith("${WANBATCH_HOME:-/opt/wanbatch}/models")
        assert service["environment"]["MODEL_CACHE_DIR"] == "/mnt/models"
        assert service["user"] == "1000:1000"


def test_the_job_interface_is_set_as_contract_5_says(services: dict) -> None:
    worker, warm = services["worker"]["environment"], services["warm"]["environment"]
    assert worker["SPEC_URI"] == "${SPEC_URI:-}"
    assert (worker["OFFLOAD"], worker["TEXT_ENCODER_DEVICE"]) == (
        "${OFFLOAD:-auto}",
        "${TEXT_ENCODER_DEVICE:-auto}",
    )
    assert (worker["QUANTIZATION"], worker["STEP_CACHE"]) == ("${QUANTIZATION:-none}", "${STEP_CACHE:-none}")
    assert warm["WARM_MODEL"].startswith("${WARM_MODEL:-Wan-AI/Wan2.2-T2V-A14B-Diffusers@")
    assert "deploy" not in services["warm"] and services["warm"]["profiles"] == ["warm"]
