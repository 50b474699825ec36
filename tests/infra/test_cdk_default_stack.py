"""The stack as `cdk deploy` creates it with cdk.json untouched (image `build` mode)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from stacks.config import INSTANCE_SPECS
from tests.infra.synthesis import Synthesized, lint_errors, synthesize

GIB = 1024


@pytest.fixture(scope="module")
def synth(fake_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk.out"))


def statements(synth: Synthesized, role_fragment: str) -> list[dict[str, Any]]:
    """Every policy statement attached to roles whose logical id contains `role_fragment`."""
    found = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        roles = json.dumps(policy["Properties"]["Roles"])
        if role_fragment in roles:
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    assert found, f"no policy attached to a role matching {role_fragment}"
    return found


def by_sid(found: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    matches = [s for s in found if s.get("Sid") == sid]
    assert len(matches) == 1, f"expected one statement {sid}, got {[s.get('Sid') for s in found]}"
    return matches[0]


def actions(statement: dict[str, Any]) -> set[str]:
    raw = statement["Action"]
    return {raw} if isinstance(raw, str) else set(raw)


def gpu_job_definition(synth: Synthesized) -> dict[str, Any]:
    definitions = [
        d["Properties"]
        for d in synth.resources("AWS::Batch::JobDefinition").values()
        if any(r["Type"] == "GPU" for r in d["Properties"]["ContainerProperties"]["ResourceRequirements"])
    ]
    assert len(definitions) == 1
    return definitions[0]


def requirements(definition: dict[str, Any]) -> dict[str, int]:
    return {r["Type"]: int(r["Value"]) for r in definition["ContainerProperties"]["ResourceRequirements"]}


# -- cdk-nag and cfn-lint -----------------------------------------------------------------------


def test_cdk_nag_reports_no_unacknowledged_findings(synth: Synthesized) -> None:
    reports = {r["pluginName"]: r for r in synth.validation["pluginReports"]}
    assert reports["AwsSolutions"]["conclusion"] == "success"
    assert reports["AwsSolutions"]["violations"] == []
    suppressed = reports["AwsSolutions"]["suppressedViolations"]
    assert suppressed, "the nag plugin ran"
    assert all(len(s["reason"]) > 20 for s in suppressed), "every acknowledgment gives a specific reason"
    # Wildcards are acknowledged finding by finding, never for the whole IAM5 rule.
    assert not any(s["acknowledgedId"].endswith("AwsSolutions-IAM5") for s in suppressed)


def test_cfn_lint_finds_no_errors(synth: Synthesized) -> None:
    assert lint_errors(synth) == []


# -- bucket ---------------------------------------------------------------------------------------


def test_bucket_blocks_public_access_and_encrypts(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                ]
            },
            "LoggingConfiguration": Match.object_like({"LogFilePrefix": "wan-bucket/"}),
        },
    )


def test_every_bucket_denies_plain_http(synth: Synthesized) -> None:
    policies = synth.resources("AWS::S3::BucketPolicy")
    assert len(policies) == len(synth.resources("AWS::S3::Bucket")) == 2
    for policy in policies.values():
        denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_lifecycle_expires_resume_state_and_aborts_uploads(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like({"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}),
                        Match.object_like({"Prefix": "resume/", "ExpirationInDays": 7, "Status": "Enabled"}),
                    ]
                )
            }
        },
    )


def test_prompt_uploads_notify_the_submit_lambda_for_json_and_jsonl(synth: Synthesized) -> None:
    notification = synth.only("Custom::S3BucketNotifications")
    configs = notification["NotificationConfiguration"]["LambdaFunctionConfigurations"]
    filters = sorted(
        tuple(sorted((r["Name"], r["Value"]) for r in c["Filter"]["Key"]["FilterRules"])) for c in configs
    )
    assert filters == [
        (("prefix", "prompts/"), ("suffix", ".json")),
        (("prefix", "prompts/"), ("suffix", ".jsonl")),
    ]
    assert all(c["Events"] == ["s3:ObjectCreated:*"] for c in configs)
    assert {json.dumps(c["LambdaFunctionArn"]) for c in configs} == {
        json.dumps({"Fn::GetAtt": [submit_function_id(synth), "Arn"]})
    }


def submit_function_id(synth: Synthesized) -> str:
    ids = [
        k
        for k, v in synth.resources("AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") == "lambdas.submit.handler.handler"
    ]
    assert len(ids) == 1
    return ids[0]


# -- network --------------------------------------------------------------------------------------


def test_default_network_has_no_nat_and_public_subnets(synth: Synthesized) -> None:
    synth.template.resource_count_is("AWS::EC2::NatGateway", 0)
    subnets = synth.resources("AWS::EC2::Subnet").values()
    assert subnets and all(s["Properties"]["MapPublicIpOnLaunch"] for s in subnets)


def test_no_security_group_accepts_traffic_from_the_internet(synth: Synthesized) -> None:
    for group in synth.resources("AWS::EC2::SecurityGroup").values():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0"
    for rule in synth.resources("AWS::EC2::SecurityGroupIngress").values():
        assert "CidrIp" not in rule["Properties"] and "CidrIpv6" not in rule["Properties"]


def test_batch_instances_have_no_inbound_rules(synth: Synthesized) -> None:
    groups = {
        k: v["Properties"]
        for k, v in synth.resources("AWS::EC2::SecurityGroup").items()
        if "BatchSecurityGroup" in k
    }
    assert len(groups) == 1
    (group_id, group), *_ = groups.items()
    assert "SecurityGroupIngress" not in group
    assert not [
        r
        for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}
    ]


# -- EFS ------------------------------------------------------------------------------------------


def test_cache_is_encrypted_elastic_and_retained(synth: Synthesized) -> None:
    synth.template.has_resource(
        "AWS::EFS::FileSystem",
        {
            "Properties": Match.object_like({"Encrypted": True, "ThroughputMode": "elastic"}),
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_cache_access_point_is_the_container_user(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::EFS::AccessPoint",
        {
            "PosixUser": {"Uid": "1000", "Gid": "1000"},
            "RootDirectory": {
                "Path": "/models",
                "CreationInfo": {"OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "0755"},
            },
        },
    )


def test_nfs_is_open_only_to_the_batch_instances(synth: Synthesized) -> None:
    rules = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()]
    nfs = [r for r in rules if r.get("FromPort") == 2049]
    assert len(nfs) == 1
    assert "BatchSecurityGroup" in nfs[0]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
    targets = synth.resources("AWS::EFS::MountTarget")
    assert len(targets) == len(synth.resources("AWS::EC2::Subnet"))  # one per job subnet


# -- DynamoDB -------------------------------------------------------------------------------------


def test_idempotency_table_expires_records(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
            "BillingMode": "PAY_PER_REQUEST",
        },
    )


# -- Batch ----------------------------------------------------------------------------------------


def test_gpu_environment_is_spot_price_capacity_optimized_and_scales_to_zero(synth: Synthesized) -> None:
    environments = [
        e["Properties"]["ComputeResources"]
        for e in synth.resources("AWS::Batch::ComputeEnvironment").values()
        if e["Properties"]["ComputeResources"]["Type"] == "SPOT"
    ]
    assert len(environments) == 1
    (spot,) = environments
    assert spot["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert spot["InstanceTypes"] == ["g6e.4xlarge"]
    assert spot["MinvCpus"] == 0
    assert spot["MaxvCpus"] == 64
    assert spot["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]
    assert spot["LaunchTemplate"]["Version"]["Fn::GetAtt"][1] == "LatestVersionNumber"


def test_no_on_demand_gpu_environment_by_default(synth: Synthesized) -> None:
    types = sorted(
        (
            e["Properties"]["ComputeResources"]["Type"],
            tuple(e["Properties"]["ComputeResources"]["InstanceTypes"]),
        )
        for e in synth.resources("AWS::Batch::ComputeEnvironment").values()
    )
    assert types == [("EC2", ("m6i.2xlarge",)), ("SPOT", ("g6e.4xlarge",))]  # the CPU one fills the cache


def test_launch_template_requires_imdsv2_with_hop_limit_2(synth: Synthesized) -> None:
    data = synth.only("AWS::EC2::LaunchTemplate")["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
    (root,) = data["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/xvda"
    assert root["Ebs"]["VolumeSize"] >= 100 and root["Ebs"]["Encrypted"] is True


def test_user_data_is_mime_multipart_and_mounts_the_nvme(synth: Synthesized) -> None:
    joined = synth.only("AWS::EC2::LaunchTemplate")["LaunchTemplateData"]["UserData"]["Fn::Base64"][
        "Fn::Join"
    ][1]
    header = joined[0]
    assert header.startswith("Content-Type: multipart/mixed; boundary=")
    script_part = next(p for p in joined if isinstance(p, dict))["Fn::Base64"]
    assert script_part.startswith("#!/bin/bash")
    for needle in ("Instance_Storage", "mkfs.xfs", "mdadm --create", "/mnt/nvme", "chown 1000:1000"):
        assert needle in script_part
    base64.b64encode(script_part.encode())  # plain text, so CloudFormation's Base64 applies to it


def test_queue_cancels_jobs_stuck_runnable(synth: Synthesized) -> None:
    queues = synth.resources("AWS::Batch::JobQueue")
    assert len(queues) == 2  # GPU jobs and cache fill
    for queue in queues.values():
        limits = queue["Properties"]["JobStateTimeLimitActions"]
        assert {(x["Reason"], x["Action"], x["State"]) for x in limits} >= {
            ("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "CANCEL", "RUNNABLE"),
            ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT", "CANCEL", "RUNNABLE"),
        }
        assert all(600 <= x["MaxTimeSeconds"] <= 86400 for x in limits)


def test_job_definition_has_one_gpu_and_fits_the_instance(synth: Synthesized) -> None:
    definition = gpu_job_definition(synth)
    needs = requirements(definition)
    instance = INSTANCE_SPECS["g6e.4xlarge"]
    assert needs["GPU"] == 1
    assert needs["VCPU"] < instance.vcpus
    assert 100 * GIB <= needs["MEMORY"] < instance.memory_gib * GIB * 0.95  # room for ECS and the OS
    container = definition["ContainerProperties"]
    assert container["Command"] == ["python", "-m", "worker"]
    assert container["User"] == "1000:1000"
    assert container["LinuxParameters"]["SharedMemorySize"] >= 2048
    assert definition["Timeout"]["AttemptDurationSeconds"] == 240 * 60


def test_job_environment_follows_contract_5(synth: Synthesized) -> None:
    env = {e["Name"]: e["Value"] for e in gpu_job_definition(synth)["ContainerProperties"]["Environment"]}
    assert env == {
        "MODEL_CACHE_DIR": "/mnt/models",
        "LOCAL_CACHE_DIR": "/mnt/nvme/models",
        "OFFLOAD": "auto",
        "TEXT_ENCODER_DEVICE": "auto",
        "QUANTIZATION": "none",  # the fast presets are off unless cdk.json turns them on
        "STEP_CACHE": "none",
    }  # SPEC_URI comes per job from the submit Lambda; no mirror unless configured


def test_job_mounts_efs_with_transit_encryption_and_the_nvme(synth: Synthesized) -> None:
    container = gpu_job_definition(synth)["ContainerProperties"]
    volumes = {v["Name"]: v for v in container["Volumes"]}
    efs = volumes["model-cache"]["EfsVolumeConfiguration"]
    assert efs["TransitEncryption"] == "ENABLED"
    assert efs["AuthorizationConfig"]["Iam"] == "ENABLED"
    assert "AccessPoint" in efs["AuthorizationConfig"]["AccessPointId"]["Ref"]
    assert volumes["nvme"]["Host"] == {"SourcePath": "/mnt/nvme/models"}
    mounts = {m["SourceVolume"]: m["ContainerPath"] for m in container["MountPoints"]}
    assert mounts == {"model-cache": "/mnt/models", "nvme": "/mnt/nvme/models"}


def test_retry_strategy_is_contract_5_in_order(synth: Synthesized) -> None:
    for definition in synth.resources("AWS::Batch::JobDefinition").values():
        strategy = definition["Properties"]["RetryStrategy"]
        assert strategy["Attempts"] == 5
        assert strategy["EvaluateOnExit"] == [
            {"Action": "RETRY", "OnStatusReason": "Host EC2*"},
            {"Action": "RETRY", "OnExitCode": "75"},
            {"Action": "EXIT", "OnReason": "*"},
        ]


def test_job_logs_have_retention(synth: Synthesized) -> None:
    container = gpu_job_definition(synth)["ContainerProperties"]
    group_id = container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]
    assert synth.raw["Resources"][group_id]["Properties"]["RetentionInDays"] == 30


def test_cache_fill_job_warms_the_configured_model_without_a_gpu(synth: Synthesized) -> None:
    fills = [
        d["Properties"]
        for d in synth.resources("AWS::Batch::JobDefinition").values()
        if any(e["Name"] == "WARM_MODEL" for e in d["Properties"]["ContainerProperties"]["Environment"])
    ]
    assert len(fills) == 1
    container = fills[0]["ContainerProperties"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["WARM_MODEL"] == "Wan-AI/Wan2.2-T2V-A14B-Diffusers@main"
    assert container["Command"] == ["python", "-m", "worker"]
    assert "GPU" not in requirements(fills[0])
    assert requirements(fills[0])["MEMORY"] < INSTANCE_SPECS["m6i.2xlarge"].memory_gib * GIB


# -- IAM ------------------------------------------------------------------------------------------


def test_job_role_is_least_privilege(synth: Synthesized) -> None:
    found = statements(synth, "JobRole")
    objects = by_sid(found, "RunsAndResumeObjects")
    assert actions(objects) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    suffixes = sorted(r["Fn::Join"][1][-1] for r in objects["Resource"])
    assert suffixes == ["/resume/*", "/runs/*"]
    listing = by_sid(found, "ListRunsAndResume")
    assert actions(listing) == {"s3:ListBucket"}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["runs/*", "resume/*"]}}
    facts = by_sid(found, "CostAndQueueFacts")
    assert actions(facts) == {"ec2:DescribeSpotPriceHistory", "batch:DescribeJobs"}
    efs = [s for s in found if "elasticfilesystem:ClientMount" in actions(s)]
    assert len(efs) == 1 and "elasticfilesystem:AccessPointArn" in efs[0]["Condition"]["StringEquals"]
    assert not [s for s in found if s.get("Sid") in ("ReadWeightsMirror", "ListWeightsMirror")]
    everything = set().union(*(actions(s) for s in found))
    assert not any(a.endswith("*") for a in everything), everything


def test_submit_lambda_policy(synth: Synthesized) -> None:
    found = statements(synth, "TriggersSubmitServiceRole")
    read = by_sid(found, "ReadPromptFiles")
    assert sorted(r["Fn::Join"][1][-1] for r in read["Resource"]) == ["/prompts/*", "/schedules/*"]
    write = by_sid(found, "WriteRunsAndRejections")
    assert actions(write) == {"s3:PutObject"}
    assert sorted(r["Fn::Join"][1][-1] for r in write["Resource"]) == ["/rejected/*", "/runs/*"]
    submit = by_sid(found, "SubmitToThisQueue")
    assert actions(submit) == {"batch:SubmitJob"}
    assert len(submit["Resource"]) == 2 and "*" not in submit["Resource"]
    inspect = by_sid(found, "InspectQueue")
    assert inspect["Resource"] == "*" and not actions(inspect) & {"batch:SubmitJob"}
    dynamo = [s for s in found if any(a.startswith("dynamodb:") for a in actions(s))]
    assert len(dynamo) == 1 and "IdempotencyTable" in json.dumps(dynamo[0]["Resource"])


def test_failure_recorder_policy(synth: Synthesized) -> None:
    found = statements(synth, "TriggersFailuresServiceRole")
    runs = by_sid(found, "ReadAndWriteRuns")
    assert actions(runs) == {"s3:GetObject", "s3:PutObject"}
    assert runs["Resource"]["Fn::Join"][1][-1] == "/runs/*"
    assert by_sid(found, "ListRuns")["Condition"] == {"StringLike": {"s3:prefix": ["runs/*"]}}
    jobs = by_sid(found, "InspectJobs")
    assert actions(jobs) == {"batch:ListJobs", "batch:DescribeJobs"} and jobs["Resource"] == "*"


# -- Lambdas, events, monitoring ------------------------------------------------------------------


def test_lambdas_use_powertools_layer_and_a_failure_destination(synth: Synthesized) -> None:
    functions = {
        v["Properties"]["Handler"]: (k, v["Properties"])
        for k, v in synth.resources("AWS::Lambda::Function").items()
        if v["Properties"]["Handler"].startswith("lambdas.")
    }
    assert sorted(functions) == ["lambdas.failures.handler.handler", "lambdas.submit.handler.handler"]
    configs = synth.resources("AWS::Lambda::EventInvokeConfig")
    for logical_id, props in functions.values():
        assert props["Runtime"] == "python3.14"
        (layer,) = props["Layers"]
        assert ":017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-x86_64:" in json.dumps(layer)
        assert props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "wanbatch"
        assert props["TracingConfig"] == {"Mode": "Active"}
        config = [c for c in configs.values() if c["Properties"]["FunctionName"] == {"Ref": logical_id}]
        assert len(config) == 1
        assert (
            "DeadLetters"
            in config[0]["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
        )


def test_submit_lambda_environment(synth: Synthesized) -> None:
    env = synth.raw["Resources"][submit_function_id(synth)]["Properties"]["Environment"]["Variables"]
    assert {
        "JOB_QUEUE",
        "JOB_DEFINITION",
        "IDEMPOTENCY_TABLE",
        "MODEL_ID",
        "MODEL_REVISION",
        "ITEMS_PER_JOB",
        "MAX_JOB_MINUTES",
        "BUCKET",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
    } <= set(env)
    assert env["ITEMS_PER_JOB"] == "auto" and env["MAX_JOB_MINUTES"] == "240"
    assert env["MODEL_REVISION"] == "main"
    assert "GPU_JOB_DEFINITIONS" not in env  # single GPU only by default


def test_lambda_bundle_holds_only_lambdas_and_wanbatch(synth: Synthesized, fake_repo: Path) -> None:
    assets = json.loads((synth.outdir / "WanBatch.assets.json").read_text())["files"].values()
    (code,) = [a for a in assets if a["displayName"] == "Triggers/Submit/Code"]
    staged = synth.outdir / code["source"]["path"]
    top = sorted(p.name for p in staged.iterdir())
    assert top == ["lambdas", "wanbatch"]
    assert not list(staged.rglob("__pycache__"))


def test_image_is_built_from_the_repo_root_with_only_what_it_needs(synth: Synthesized) -> None:
    assets = json.loads((synth.outdir / "WanBatch.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["dockerFile"] == "batch_image/Dockerfile"
    staged = synth.outdir / image["source"]["directory"]
    assert sorted(p.name for p in staged.iterdir()) == ["batch_image", "wanbatch"]
    assert (staged / "batch_image" / "Dockerfile").exists()


def test_failed_jobs_of_this_queue_reach_the_failure_recorder(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.batch"],
                "detail-type": ["Batch Job State Change"],
                "detail": {
                    "jobQueue": [
                        {"Fn::GetAtt": [Match.string_like_regexp("ComputeJobQueue"), "JobQueueArn"]}
                    ],
                    "status": ["FAILED"],
                },
            },
            "Targets": [Match.object_like({"DeadLetterConfig": Match.any_value()})],
        },
    )


def test_alarms_cover_failed_jobs_lambda_errors_and_dead_letters(synth: Synthesized) -> None:
    alarms = [a["Properties"] for a in synth.resources("AWS::CloudWatch::Alarm").values()]
    metrics = sorted(a["MetricName"] for a in alarms)
    assert metrics == ["ApproximateNumberOfMessagesVisible", "Errors", "Errors", "TriggeredRules"]
    assert all(a["AlarmActions"] and a["Threshold"] == 1 for a in alarms)
    synth.template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    synth.template.has_resource_properties("AWS::SNS::Topic", {})
    synth.template.resource_count_is("AWS::SNS::Subscription", 0)  # no email configured


def test_no_schedules_by_default(synth: Synthesized) -> None:
    synth.template.resource_count_is("AWS::Scheduler::Schedule", 0)


def test_outputs_name_bucket_queue_definition_and_topic(synth: Synthesized) -> None:
    assert {"BucketName", "JobQueueArn", "JobDefinitionArn", "TopicArn", "CacheFillJobQueueArn"} <= set(
        synth.raw["Outputs"]
    )
