"""Context overrides: pull mode, private network, On-Demand fallback, multi-GPU, a weight mirror,
schedules and an email address, all in one synthesis (each takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks.config import INSTANCE_SPECS
from tests.infra.synthesis import Synthesized, lint_errors, synthesize

GIB = 1024
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/wan-video:v7"
OVERRIDES: dict[str, Any] = {
    "image_mode": "pull",
    "image_uri": IMAGE_URI,
    "network": "private",
    "capacity": "spot-then-on-demand",
    "instance_types": ["g6e.4xlarge", "g6e.8xlarge"],
    "max_vcpus": 32,
    "model_revision": "0123456789abcdef0123456789abcdef01234567",
    "items_per_job": 2,
    "retry_attempts": 3,
    "log_retention_days": 90,
    "cache_removal": "destroy",
    "multi_gpu": {"gpus": 4, "instance_types": ["g6e.12xlarge"]},
    "weights_s3_mirror": "s3://team-weights/wan2.2/",
    "notification_email": "videos@example.com",
    "step_cache": "taylorseer",
    "schedules": [
        {
            "name": "nightly",
            "expression": "cron(0 2 * * ? *)",
            "key": "schedules/nightly.json",
            "timezone": "Europe/Berlin",
        }
    ],
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), **OVERRIDES)


def job_definitions(synth: Synthesized) -> dict[int, dict[str, Any]]:
    """GPU count (0 for the cache fill) -> job definition properties."""
    found = {}
    for definition in synth.resources("AWS::Batch::JobDefinition").values():
        needs = {
            r["Type"]: int(r["Value"])
            for r in definition["Properties"]["ContainerProperties"]["ResourceRequirements"]
        }
        found[needs.get("GPU", 0)] = definition["Properties"]
    return found


def environment(definition: dict[str, Any]) -> dict[str, str]:
    return {e["Name"]: e["Value"] for e in definition["ContainerProperties"]["Environment"]}


def test_cdk_nag_and_cfn_lint_pass(synth: Synthesized) -> None:
    (report,) = synth.validation["pluginReports"]
    assert report["pluginName"] == "AwsSolutions" and report["violations"] == []
    assert lint_errors(synth) == []


def test_pull_mode_uses_the_ecr_image_and_builds_nothing(synth: Synthesized) -> None:
    assets = json.loads((synth.outdir / "WanBatch.assets.json").read_text())
    assert assets.get("dockerImages", {}) == {}
    for definition in job_definitions(synth).values():
        image = json.dumps(definition["ContainerProperties"]["Image"])
        assert "123456789012.dkr.ecr.us-east-1." in image and "/wan-video:v7" in image
    pulls = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if "ecr:BatchGetImage" in s["Action"]
    ]
    assert pulls and all("repository/wan-video" in json.dumps(s["Resource"]) for s in pulls)


def test_private_network_has_a_nat_an_s3_endpoint_and_private_job_subnets(synth: Synthesized) -> None:
    synth.template.resource_count_is("AWS::EC2::NatGateway", 1)
    synth.template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Gateway",
            "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
        },
    )
    private = {
        k
        for k, v in synth.resources("AWS::EC2::Subnet").items()
        if not v["Properties"]["MapPublicIpOnLaunch"]
    }
    assert private
    for env in synth.resources("AWS::Batch::ComputeEnvironment").values():
        subnets = {s["Ref"] for s in env["Properties"]["ComputeResources"]["Subnets"]}
        assert subnets <= private
    mount_subnets = {
        m["Properties"]["SubnetId"]["Ref"] for m in synth.resources("AWS::EFS::MountTarget").values()
    }
    assert mount_subnets == private


def test_queue_tries_spot_then_multi_gpu_then_on_demand(synth: Synthesized) -> None:
    queues = [
        q["Properties"]["ComputeEnvironmentOrder"]
        for q in synth.resources("AWS::Batch::JobQueue").values()
        if len(q["Properties"]["ComputeEnvironmentOrder"]) > 1
    ]
    assert len(queues) == 1
    resources = synth.raw["Resources"]
    ordered = [
        resources[entry["ComputeEnvironment"]["Fn::GetAtt"][0]]["Properties"]["ComputeResources"]
        for entry in sorted(queues[0], key=lambda e: e["Order"])
    ]
    assert [(c["Type"], c["InstanceTypes"]) for c in ordered] == [
        ("SPOT", ["g6e.4xlarge", "g6e.8xlarge"]),
        ("SPOT", ["g6e.12xlarge"]),
        ("EC2", ["g6e.4xlarge", "g6e.8xlarge"]),
    ]
    assert [c["MaxvCpus"] for c in ordered] == [32, 48, 32]
    assert all(
        c["MinvCpus"] == 0 and c["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}] for c in ordered
    )


def test_single_gpu_job_fits_the_smallest_listed_instance(synth: Synthesized) -> None:
    needs = {
        r["Type"]: int(r["Value"])
        for r in job_definitions(synth)[1]["ContainerProperties"]["ResourceRequirements"]
    }
    smallest = INSTANCE_SPECS["g6e.4xlarge"]
    assert needs["VCPU"] < smallest.vcpus and needs["MEMORY"] < smallest.memory_gib * GIB


def test_multi_gpu_job_definition_runs_the_worker_on_four_gpus(synth: Synthesized) -> None:
    definition = job_definitions(synth)[4]
    container = definition["ContainerProperties"]
    # The worker launches one rank per GPU itself (the spec's gpus), so Batch sees rank 0's 0/64/75/1.
    assert container["Command"] == ["python", "-m", "worker"]
    needs = {r["Type"]: int(r["Value"]) for r in container["ResourceRequirements"]}
    instance = INSTANCE_SPECS["g6e.12xlarge"]
    assert (
        needs["GPU"] == 4 and needs["VCPU"] < instance.vcpus and needs["MEMORY"] < instance.memory_gib * GIB
    )
    assert container["LinuxParameters"]["SharedMemorySize"] == 32 * GIB
    assert definition["RetryStrategy"]["EvaluateOnExit"][1] == {"Action": "RETRY", "OnExitCode": "75"}
    assert {v["Name"] for v in container["Volumes"]} == {"model-cache", "nvme"}


def test_the_configured_fast_preset_reaches_every_gpu_job(synth: Synthesized) -> None:
    gpu_jobs = {gpus: d for gpus, d in job_definitions(synth).items() if gpus > 0}
    assert sorted(gpu_jobs) == [1, 4]
    for definition in gpu_jobs.values():
        assert (environment(definition)["STEP_CACHE"], environment(definition)["QUANTIZATION"]) == (
            "taylorseer",
            "none",
        )


def submit_lambda(synth: Synthesized) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v["Properties"])
        for k, v in synth.resources("AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") == "lambdas.submit.handler.handler"
    ]
    return found


def test_submit_lambda_knows_every_gpu_job_definition(synth: Synthesized) -> None:
    _, props = submit_lambda(synth)
    env = props["Environment"]["Variables"]
    # {"1": arn, "4": arn}, rendered by CloudFormation from a Fn::Join of the definitions' Refs.
    parts = env["GPU_JOB_DEFINITIONS"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)
    refs = {
        gpus: next(k for k, v in synth.resources("AWS::Batch::JobDefinition").items() if v["Properties"] is d)
        for gpus, d in job_definitions(synth).items()
    }
    assert json.loads(text) == {"1": f"<{refs[1]}>", "4": f"<{refs[4]}>"}
    assert env["ITEMS_PER_JOB"] == "2"
    assert env["MODEL_REVISION"] == OVERRIDES["model_revision"]
    submit = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "SubmitToThisQueue"
    ]
    assert len(submit) == 1 and len(submit[0]["Resource"]) == 3  # the queue and both definitions


def test_weight_mirror_is_readable_and_named_to_every_job(synth: Synthesized) -> None:
    for definition in job_definitions(synth).values():
        assert environment(definition)["MODEL_S3_MIRROR"] == "s3://team-weights/wan2.2/"
    reads = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "ReadWeightsMirror"
    ]
    assert len(reads) == 2  # the GPU job role and the cache-fill role
    for statement in reads:
        assert statement["Action"] == "s3:GetObject"
        assert json.dumps(statement["Resource"]).endswith(':s3:::team-weights/wan2.2/*"]]}')
    lists = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "ListWeightsMirror"
    ]
    assert all(s["Condition"] == {"StringLike": {"s3:prefix": ["wan2.2/*"]}} for s in lists)
    writes = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "WriteWeightsMirror"
    ]
    assert len(writes) == 1  # only the cache-fill job uploads the mirror; GPU jobs only read it
    assert writes[0]["Action"] == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert json.dumps(writes[0]["Resource"]).endswith(':s3:::team-weights/wan2.2/*"]]}')


def test_cache_fill_warms_the_pinned_revision(synth: Synthesized) -> None:
    env = environment(job_definitions(synth)[0])
    assert env["WARM_MODEL"] == f"Wan-AI/Wan2.2-T2V-A14B-Diffusers@{OVERRIDES['model_revision']}"


def test_schedule_invokes_submit_with_the_submission_payload(synth: Synthesized) -> None:
    (schedule,) = [s["Properties"] for s in synth.resources("AWS::Scheduler::Schedule").values()]
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "Europe/Berlin"
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": [submit_lambda(synth)[0], "Arn"]}
    assert json.loads(target["Input"]) == {
        "source": "wanbatch.schedule",
        "key": "schedules/nightly.json",
        "time": "<aws.scheduler.scheduled-time>",
    }
    assert "DeadLetters" in target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]


def test_email_subscription_retention_attempts_and_cache_removal(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "videos@example.com"}
    )
    assert {d["RetryStrategy"]["Attempts"] for d in job_definitions(synth).values()} == {3}
    groups = synth.resources("AWS::Logs::LogGroup").values()
    assert {g["Properties"]["RetentionInDays"] for g in groups} == {90}
    (cache,) = synth.resources("AWS::EFS::FileSystem").values()
    assert cache["DeletionPolicy"] == "Delete"


def test_asset_staging_left_the_checkout_alone(synth: Synthesized) -> None:
    staged = [p for p in Path(synth.outdir).iterdir() if p.name.startswith("asset.")]
    assert len(staged) == 1  # the Lambda code only; pull mode stages no image
    assert sorted(p.name for p in staged[0].iterdir()) == ["lambdas", "wanbatch"]
