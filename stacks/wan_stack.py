"""The one stack: composes the constructs and does the wiring between them."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.bundling import job_image
from stacks.compute import Compute
from stacks.config import AppConfig
from stacks.monitoring import Monitoring
from stacks.nag import suppress_stack_findings
from stacks.network import Network
from stacks.storage import Storage
from stacks.triggers import Triggers


class WanBatchStack(Stack):
    def __init__(self, scope: Construct, id_: str, *, config: AppConfig, **kwargs) -> None:
        super().__init__(scope, id_, **kwargs)
        retention = retention_days(config.log_retention_days)

        network = Network(
            self,
            "Network",
            mode=config.network,
            availability_zones=config.availability_zones,
            log_retention=retention,
        )
        storage = Storage(
            self,
            "Storage",
            vpc=network.vpc,
            subnets=network.job_subnets,
            batch_security_group=network.batch_security_group,
            resume_expiry_days=config.resume_expiry_days,
            retain_cache=config.cache_removal == "retain",
        )
        multi = config.multi_gpu
        compute = Compute(
            self,
            "Compute",
            vpc=network.vpc,
            subnets=network.job_subnets,
            security_group=network.batch_security_group,
            bucket=storage.bucket,
            file_system=storage.file_system,
            access_point=storage.access_point,
            image=job_image(self, mode=config.image_mode, image_uri=config.image_uri),
            capacity=config.capacity,
            instance_types=config.instance_types,
            max_vcpus=config.max_vcpus,
            job_sizes=config.job_sizes,
            multi_gpu_instance_types=multi.instance_types if multi else (),
            multi_gpu_max_vcpus=multi.max_vcpus if multi else 0,
            cache_fill_instance_types=config.cache_fill_instance_types,
            cache_fill_size=config.cache_fill_size,
            warm_model=config.warm_model,
            weights_mirror=config.weights_s3_mirror,
            root_volume_gib=config.root_volume_gib,
            max_job_minutes=config.max_job_minutes,
            retry_attempts=config.retry_attempts,
            runnable_timeout_minutes=config.runnable_timeout_minutes,
            worker_presets=config.worker_presets,
            log_retention=retention,
        )
        triggers = Triggers(
            self,
            "Triggers",
            bucket=storage.bucket,
            idempotency_table=storage.idempotency_table,
            job_queue=compute.job_queue,
            job_definitions=compute.job_definitions,
            model_id=config.model_id,
            model_revision=config.model_revision,
            items_per_job=config.items_per_job,
            max_job_minutes=config.max_job_minutes,
            schedules=config.schedules,
            powertools_layer_version=config.powertools_layer_version,
            log_retention=retention,
        )
        monitoring = Monitoring(
            self,
            "Monitoring",
            job_queue=compute.job_queue,
            functions={"Submit": triggers.submit_function, "Failures": triggers.failure_function},
            dead_letter_queue=triggers.dead_letter_queue,
            failed_jobs_rule=triggers.failed_jobs_rule,
            notification_email=config.notification_email,
        )
        suppress_stack_findings(self)

        outputs = {
            "BucketName": storage.bucket.bucket_name,
            "JobQueueArn": compute.job_queue.job_queue_arn,
            "JobDefinitionArn": compute.job_definitions[1].job_definition_arn,
            "CacheFillJobQueueArn": compute.cache_queue.job_queue_arn,
            "CacheFillJobDefinitionArn": compute.cache_job_definition.job_definition_arn,
            "TopicArn": monitoring.topic.topic_arn,
            "JobLogGroup": compute.log_group.log_group_name,
        }
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)


_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def retention_days(days: int) -> logs.RetentionDays:
    """`log_retention_days` -> a retention CloudWatch Logs accepts."""
    if days not in _RETENTION:
        raise ValueError(f"log_retention_days must be one of {sorted(_RETENTION)}, got {days}")
    return _RETENTION[days]
