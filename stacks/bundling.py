"""The two deployable bundles, both staged from the repo root without Docker at synth time.

- Lambda code: `lambdas/` and `wanbatch/` side by side (third-party packages come from the public
  Powertools layer), so the handlers import the same contracts package as the job.
- Job image: `batch_image/Dockerfile` built from the repo root, so the image can install `wanbatch/`.

Both use an allow-list of paths: anything else in the checkout (.venv, node_modules, cdk.out, tests,
outputs, caches) never reaches an asset, and unrelated edits leave the asset hashes unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

from aws_cdk import IgnoreMode
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parent.parent
LAMBDA_PATHS = ("lambdas", "wanbatch")
IMAGE_PATHS = ("batch_image", "wanbatch")  # what batch_image/Dockerfile COPYs
DOCKERFILE = "batch_image/Dockerfile"
_NEVER = ("**/__pycache__", "**/*.pyc", "**/.pytest_cache", "*.egg-info")


def allow_only(paths: tuple[str, ...]) -> list[str]:
    """Glob excludes that drop everything at the root except `paths` (folders keep their contents)."""
    keep = [f"!{p}" for p in paths] + [f"!{p}/**" for p in paths]
    return ["*", ".*", *keep, *_NEVER]  # "*" does not match dot-folders (.git, .venv, .cache)


def lambda_code() -> lambda_.Code:
    """`lambdas/` + `wanbatch/` as one zip: handlers are `lambdas.<name>.handler.handler`."""
    return lambda_.Code.from_asset(
        str(REPO_ROOT), exclude=allow_only(LAMBDA_PATHS), ignore_mode=IgnoreMode.GLOB
    )


def job_image(scope: Construct, *, mode: str, image_uri: str | None) -> ecs.ContainerImage:
    """`build`: an image asset that `cdk deploy` builds and pushes; `pull`: an existing image by URI.

    An ECR URI becomes an ECR image so the job's execution role gets pull permission; any other
    registry (public ECR, Docker Hub, GHCR) is pulled as a public image.
    """
    if mode == "build":
        return ecs.ContainerImage.from_docker_image_asset(
            ecr_assets.DockerImageAsset(
                scope,
                "JobImage",
                directory=str(REPO_ROOT),
                file=DOCKERFILE,
                exclude=allow_only(IMAGE_PATHS),
                ignore_mode=IgnoreMode.GLOB,
                platform=ecr_assets.Platform.LINUX_AMD64,
            )
        )
    if not image_uri:
        raise ValueError("image mode 'pull' needs an image URI")
    ecr_ref = _ecr_reference(image_uri)
    if ecr_ref is None:
        return ecs.ContainerImage.from_registry(image_uri)
    repository_arn, tag = ecr_ref
    repo = ecr.Repository.from_repository_arn(scope, "JobImageRepository", repository_arn)
    return ecs.ContainerImage.from_ecr_repository(repo, tag)


def _ecr_reference(uri: str) -> tuple[str, str] | None:
    """`<acct>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>` -> (repository ARN, tag or digest)."""
    match = re.fullmatch(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)(?:([:@])(.+))?", uri)
    if not match:
        return None
    account, region, repo, _separator, ref = match.groups()
    # A digest (`@sha256:...`) is accepted by EcrImage in place of a tag.
    return f"arn:aws:ecr:{region}:{account}:repository/{repo}", ref or "latest"
