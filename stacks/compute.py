"""AWS Batch: GPU compute environments that scale to zero, the job queue, the job definitions
(contract 5), and the CPU cache-fill queue that downloads the model into EFS without a GPU.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.config import JobSize, S3Location
from stacks.nag import acknowledge, acknowledge_prefixes
from wanbatch.layout import RESUME_PREFIX, RUNS_PREFIX

MODEL_CACHE_DIR = "/mnt/models"
NVME_MOUNT = "/mnt/nvme"
LOCAL_CACHE_DIR = f"{NVME_MOUNT}/models"
CONTAINER_USER = "1000:1000"
WORKER_COMMAND = ["python", "-m", "worker"]
EXIT_RETRYABLE = "75"  # contract 5: interrupted or transient
NVME_SCRIPT = Path(__file__).with_name("nvme_mount.sh")


def retry_strategies() -> list[batch.RetryStrategy]:
    """Contract 5, in this order: Spot reclaim and exit 75 are retried, anything else exits."""
    return [
        batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.SPOT_INSTANCE_RECLAIMED),  # "Host EC2*"
        batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_exit_code=EXIT_RETRYABLE)),
        batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
    ]


class Compute(Construct):
    """`.job_queue`, `.job_definitions` ({gpus: definition}), `.cache_queue`, `.cache_job_definition`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        bucket: s3.IBucket,
        file_system: efs.FileSystem,
        access_point: efs.AccessPoint,
        image: ecs.ContainerImage,
        capacity: str,
        instance_types: tuple[str, ...],
        max_vcpus: int,
        job_sizes: dict[int, JobSize],
        multi_gpu_instance_types: tuple[str, ...],
        multi_gpu_max_vcpus: int,
        cache_fill_instance_types: tuple[str, ...],
        cache_fill_size: JobSize,
        warm_model: str,
        weights_mirror: S3Location | None,
        root_volume_gib: int,
        max_job_minutes: int,
        retry_attempts: int,
        runnable_timeout_minutes: int,
        worker_presets: dict[str, str] | None = None,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id_)
        self._vpc, self._subnets, self._security_group = vpc, subnets, security_group
        self._file_system, self._access_point, self._image = file_system, access_point, image
        self._mirror = weights_mirror
        self._launch_template = self._make_launch_template(root_volume_gib)
        self._instance_role = self._make_instance_role()
        self.log_group = logs.LogGroup(
            self, "JobLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )

        # 1. GPU compute environments, in the order the queue tries them.
        environments: list[batch.IComputeEnvironment] = []
        if capacity in ("spot", "spot-then-on-demand"):
            environments.append(self._gpu_environment("GpuSpot", instance_types, max_vcpus, spot=True))
        if multi_gpu_instance_types:
            environments.append(
                self._gpu_environment(
                    "MultiGpuSpot",
                    multi_gpu_instance_types,
                    multi_gpu_max_vcpus,
                    spot=capacity != "on-demand",
                )
            )
        if capacity in ("on-demand", "spot-then-on-demand"):
            environments.append(self._gpu_environment("GpuOnDemand", instance_types, max_vcpus, spot=False))
        self.compute_environments = environments

        # 2. The queue. Jobs that can never be placed are cancelled, not left RUNNABLE for days.
        self.job_queue = batch.JobQueue(
            self,
            "JobQueue",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=env, order=i + 1)
                for i, env in enumerate(environments)
            ],
            job_state_time_limit_actions=self._runnable_limits(runnable_timeout_minutes),
        )

        # 3. Job definitions: one per GPU count, sharing the role, volumes and retry rules.
        self.job_role = self._make_job_role(bucket)
        self.job_definitions = {
            gpus: self._job_definition(
                f"Gpu{gpus}" if gpus > 1 else "Gpu",
                size=size,
                role=self.job_role,
                # Also for several GPUs: the worker starts one rank per GPU itself and exits with rank 0's
                # code; under torchrun an exit 75 (retry me) would reach Batch as 1 (final).
                command=WORKER_COMMAND,
                environment={"OFFLOAD": "auto", "TEXT_ENCODER_DEVICE": "auto", **(worker_presets or {})},
                timeout=Duration.minutes(max_job_minutes),
                retry_attempts=retry_attempts,
                nvme=True,
            )
            for gpus, size in sorted(job_sizes.items())
        }

        # 4. Cache fill: same image on a small CPU instance, WARM_MODEL set (contract 5).
        cache_environment = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "CacheFillOnDemand",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            instance_types=[ec2.InstanceType(t) for t in cache_fill_instance_types],
            use_optimal_instance_classes=False,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023)],
            launch_template=self._launch_template,
            instance_role=self._instance_role,
            minv_cpus=0,
            maxv_cpus=max(cache_fill_size.vcpus + 1, 2),
        )
        self._pin_launch_template_version(cache_environment)
        self.cache_queue = batch.JobQueue(
            self,
            "CacheFillQueue",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=cache_environment, order=1)
            ],
            job_state_time_limit_actions=self._runnable_limits(runnable_timeout_minutes),
        )
        self.cache_job_definition = self._job_definition(
            "CacheFill",
            size=cache_fill_size,
            role=self._make_cache_role(),
            command=WORKER_COMMAND,
            environment={"WARM_MODEL": warm_model},
            timeout=Duration.hours(6),
            retry_attempts=retry_attempts,
            nvme=False,
        )
        self._suppress_nag()

    # -- instances ------------------------------------------------------------------------------

    def _make_launch_template(self, root_volume_gib: int) -> ec2.LaunchTemplate:
        # Batch merges its own user data with ours, which it accepts only as MIME multipart.
        shell = ec2.UserData.for_linux(shebang="#!/bin/bash")
        shell.add_commands(NVME_SCRIPT.read_text())
        user_data = ec2.MultipartUserData()
        user_data.add_part(ec2.MultipartBody.from_user_data(shell))
        return ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            user_data=user_data,
            require_imdsv2=True,
            http_put_response_hop_limit=2,  # containers (one hop further) read the Spot notice and AZ
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",  # the ECS AL2023 AMIs' root device
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_gib, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True
                    ),
                )
            ],
        )

    def _make_instance_role(self) -> iam.Role:
        return iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonEC2ContainerServiceforEC2Role"
                ),
                # The original deployment was reached through SSM Session Manager; so are these hosts.
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
            ],
        )

    def _gpu_environment(
        self, id_: str, instance_types: tuple[str, ...], max_vcpus: int, *, spot: bool
    ) -> batch.ManagedEc2EcsComputeEnvironment:
        environment = batch.ManagedEc2EcsComputeEnvironment(
            self,
            id_,
            vpc=self._vpc,
            vpc_subnets=self._subnets,
            security_groups=[self._security_group],
            spot=spot,
            allocation_strategy=(
                batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED
                if spot
                else batch.AllocationStrategy.BEST_FIT_PROGRESSIVE
            ),
            instance_types=[ec2.InstanceType(t) for t in instance_types],
            use_optimal_instance_classes=False,
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
            launch_template=self._launch_template,
            instance_role=self._instance_role,
            minv_cpus=0,  # scale to zero: no GPU is paid for while the queue is empty
            maxv_cpus=max_vcpus,
        )
        self._pin_launch_template_version(environment)
        return environment

    def _pin_launch_template_version(self, environment: batch.ManagedEc2EcsComputeEnvironment) -> None:
        # Without a version Batch keeps launching the template's first (default) version; pinning
        # the latest one makes a user-data or volume change reach new instances on deploy.
        cfn = environment.node.default_child
        cfn.add_property_override(
            "ComputeResources.LaunchTemplate.Version", self._launch_template.latest_version_number
        )

    @staticmethod
    def _runnable_limits(minutes: int) -> list[batch.JobStateTimeLimitAction]:
        reasons = [
            (batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY, minutes),
            # These two never resolve by waiting: the job asks for more than the environments offer.
            (batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE, 10),
            (batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT, 10),
        ]
        return [
            batch.JobStateTimeLimitAction(
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
                reason=reason,
                max_time=Duration.minutes(limit),
            )
            for reason, limit in reasons
        ]

    # -- jobs -----------------------------------------------------------------------------------

    def _job_definition(
        self,
        id_: str,
        *,
        size: JobSize,
        role: iam.IRole,
        command: list[str],
        environment: dict[str, str],
        timeout: Duration,
        retry_attempts: int,
        nvme: bool,
    ) -> batch.EcsJobDefinition:
        env = {"MODEL_CACHE_DIR": MODEL_CACHE_DIR, **environment}
        volumes = [
            batch.EcsVolume.efs(
                name="model-cache",
                container_path=MODEL_CACHE_DIR,
                file_system=self._file_system,
                access_point_id=self._access_point.access_point_id,
                enable_transit_encryption=True,
                use_job_role=True,  # IAM-authorized mount: only these job roles may mount the cache
            )
        ]
        if nvme:
            env["LOCAL_CACHE_DIR"] = LOCAL_CACHE_DIR
            volumes.append(
                batch.EcsVolume.host(name="nvme", host_path=LOCAL_CACHE_DIR, container_path=LOCAL_CACHE_DIR)
            )
        if self._mirror:
            env["MODEL_S3_MIRROR"] = self._mirror.uri
        container = batch.EcsEc2ContainerDefinition(
            self,
            f"{id_}Container",
            image=self._image,
            command=command,
            cpu=size.vcpus,
            memory=Size.gibibytes(size.memory_gib),
            gpu=size.gpus or None,
            user=CONTAINER_USER,
            environment=env,
            job_role=role,
            volumes=volumes,
            # PyTorch workers and NCCL share tensors through /dev/shm; Docker's 64 MiB default is too small.
            linux_parameters=batch.LinuxParameters(
                self, f"{id_}Linux", shared_memory_size=Size.gibibytes(8 * size.gpus or 2)
            ),
            logging=ecs.LogDriver.aws_logs(stream_prefix=id_.lower(), log_group=self.log_group),
        )
        acknowledge(
            container.execution_role,
            {
                "AwsSolutions-IAM5[Resource::*]": "ecr:GetAuthorizationToken, which the execution role "
                "needs to pull the image, supports no resource-level permissions."
            },
        )
        return batch.EcsJobDefinition(
            self,
            f"{id_}JobDefinition",
            container=container,
            retry_attempts=retry_attempts,
            retry_strategies=retry_strategies(),
            timeout=timeout,
            propagate_tags=True,
        )

    def _efs_client_statement(self) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
            resources=[self._file_system.file_system_arn],
            conditions={
                "StringEquals": {"elasticfilesystem:AccessPointArn": self._access_point.access_point_arn}
            },
        )

    def _make_job_role(self, bucket: s3.IBucket) -> iam.Role:
        role = iam.Role(self, "JobRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
        prefixes = [RUNS_PREFIX, RESUME_PREFIX]
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RunsAndResumeObjects",
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[bucket.arn_for_objects(f"{p}*") for p in prefixes],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListRunsAndResume",  # so that a missing key reads as 404, not 403
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CostAndQueueFacts",  # manifest: Spot price and queue wait; neither takes a resource ARN
                actions=["ec2:DescribeSpotPriceHistory", "batch:DescribeJobs"],
                resources=["*"],
            )
        )
        role.add_to_policy(self._efs_client_statement())
        self._grant_mirror(role)
        acknowledge_prefixes(
            role,
            bucket,
            {
                RUNS_PREFIX: "The job reads its run's spec and writes videos, manifests, progress and errors "
                "under runs/<run_id>/; run ids are only known at submit time.",
                RESUME_PREFIX: "Spot-resume state lives under resume/<run_id>/<item>/, created per run.",
            },
        )
        acknowledge(
            role,
            {
                "AwsSolutions-IAM5[Resource::*]": "ec2:DescribeSpotPriceHistory and batch:DescribeJobs "
                "support no resource-level permissions (manifest cost and queue-wait facts)."
            },
        )
        return role

    def _make_cache_role(self) -> iam.Role:
        role = iam.Role(self, "CacheFillRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
        role.add_to_policy(self._efs_client_statement())
        self._grant_mirror(role, write=True)  # the cache-fill job uploads the filled cache to the mirror
        return role

    def _grant_mirror(self, role: iam.Role, *, write: bool = False) -> None:
        if not self._mirror:
            return
        bucket_arn = Stack.of(self).format_arn(
            service="s3", region="", account="", resource=self._mirror.bucket
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadWeightsMirror",
                actions=["s3:GetObject"],
                resources=[f"{bucket_arn}/{self._mirror.prefix}*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListWeightsMirror",
                actions=["s3:ListBucket"],
                resources=[bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self._mirror.prefix}*"]}},
            )
        )
        if write:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="WriteWeightsMirror",
                    actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                    resources=[f"{bucket_arn}/{self._mirror.prefix}*"],
                )
            )
        access = "Read and write (cache-fill job)" if write else "Read-only"
        acknowledge(
            role,
            {
                f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{self._mirror.bucket}/"
                f"{self._mirror.prefix}*]": f"{access} access to the configured weight mirror's prefix."
            },
        )

    def _suppress_nag(self) -> None:
        acknowledge(
            self._instance_role,
            {
                f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{name}]": reason
                for name, reason in {
                    "service-role/AmazonEC2ContainerServiceforEC2Role": "Batch ECS hosts run the ECS agent.",
                    "AmazonSSMManagedInstanceCore": "Hosts are reached by SSM Session Manager, never SSH.",
                }.items()
            },
        )
