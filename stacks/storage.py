"""Storage: the one S3 bucket of contract 2, the EFS checkpoint cache and the idempotency table."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.nag import acknowledge
from wanbatch.layout import RESUME_PREFIX

CONTAINER_UID = "1000"  # the job container's user (contract 5); the EFS access point uses the same
CACHE_PATH = "/models"


class Storage(Construct):
    """`.bucket`, `.file_system` + `.access_point` (the cache), `.idempotency_table`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        batch_security_group: ec2.ISecurityGroup,
        resume_expiry_days: int,
        retain_cache: bool,
    ) -> None:
        super().__init__(scope, id_)
        self.bucket = self._bucket(resume_expiry_days)
        self.file_system, self.access_point = self._cache(vpc, subnets, batch_security_group, retain_cache)
        self.idempotency_table = dynamodb.Table(
            self,
            "IdempotencyTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expiration",  # Powertools idempotency's record expiry
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.DESTROY,  # only short-lived dedupe records
        )

    def _bucket(self, resume_expiry_days: int) -> s3.Bucket:
        access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            access_logs, {"AwsSolutions-S1": "This is the access-log bucket: logging it to itself loops."}
        )
        return s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="wan-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(1)
                ),
                # Spot-resume state is deleted on success; what a cancelled run leaves behind expires.
                s3.LifecycleRule(
                    id="expire-resume-state",
                    prefix=RESUME_PREFIX,
                    expiration=Duration.days(resume_expiry_days),
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,  # videos and manifests outlive the stack
        )

    def _cache(
        self,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        batch_security_group: ec2.ISecurityGroup,
        retain: bool,
    ) -> tuple[efs.FileSystem, efs.AccessPoint]:
        security_group = ec2.SecurityGroup(
            self,
            "CacheSecurityGroup",
            vpc=vpc,
            description="EFS model cache: NFS from Batch instances only",
            allow_all_outbound=False,
        )
        security_group.add_ingress_rule(batch_security_group, ec2.Port.tcp(2049), "NFS from Batch instances")
        file_system = efs.FileSystem(
            self,
            "ModelCache",
            vpc=vpc,
            vpc_subnets=subnets,
            security_group=security_group,
            encrypted=True,
            throughput_mode=efs.ThroughputMode.ELASTIC,
            performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
            # The cache holds ~70 GB that takes an hour to download again: keep it unless told otherwise.
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        access_point = file_system.add_access_point(
            "CacheAccessPoint",
            path=CACHE_PATH,
            posix_user=efs.PosixUser(uid=CONTAINER_UID, gid=CONTAINER_UID),
            create_acl=efs.Acl(owner_uid=CONTAINER_UID, owner_gid=CONTAINER_UID, permissions="0755"),
        )
        return file_system, access_point
