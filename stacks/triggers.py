"""Triggers: the submit and failure-recorder Lambdas and what invokes them (S3 prompt uploads,
EventBridge Scheduler, Batch job-state events), each with least-privilege permissions.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack, TimeZone
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.bundling import lambda_code
from stacks.config import ScheduleConfig
from stacks.nag import acknowledge, acknowledge_prefixes
from wanbatch.layout import PROMPT_SUFFIXES, PROMPTS_PREFIX, REJECTED_PREFIX, RUNS_PREFIX, SCHEDULES_PREFIX

RUNTIME = lambda_.Runtime.PYTHON_3_14
POWERTOOLS_LAYER = (
    "arn:aws:lambda:{region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-x86_64:{version}"
)
SERVICE_NAME = "wanbatch"
METRICS_NAMESPACE = "WanBatch"


class Triggers(Construct):
    """`.submit_function`, `.failure_function`, `.dead_letter_queue`, `.failed_jobs_rule`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        bucket: s3.IBucket,
        idempotency_table: dynamodb.ITable,
        job_queue: batch.IJobQueue,
        job_definitions: dict[int, batch.IJobDefinition],
        model_id: str,
        model_revision: str,
        items_per_job: str,
        max_job_minutes: int,
        schedules: tuple[ScheduleConfig, ...],
        powertools_layer_version: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id_)
        self._log_retention = log_retention
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            self.dead_letter_queue,
            {
                "AwsSolutions-SQS3": "This queue is the dead-letter destination of the Lambdas, rules and "
                "schedules (nag only recognises queues named in another queue's redrive policy)."
            },
        )
        self._layer = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "Powertools",
            POWERTOOLS_LAYER.format(region=Stack.of(self).region, version=powertools_layer_version),
        )

        # 1. Submit: prompt file -> spec + one Batch array job.
        stack = Stack.of(self)
        environment = {
            "BUCKET": bucket.bucket_name,  # where schedule payloads' prompt files live
            "JOB_QUEUE": job_queue.job_queue_arn,
            "JOB_DEFINITION": job_definitions[1].job_definition_arn,
            "IDEMPOTENCY_TABLE": idempotency_table.table_name,
            "MODEL_ID": model_id,
            "MODEL_REVISION": model_revision,
            "ITEMS_PER_JOB": items_per_job,
            "MAX_JOB_MINUTES": str(max_job_minutes),
        }
        if len(job_definitions) > 1:
            environment["GPU_JOB_DEFINITIONS"] = stack.to_json_string(
                {str(gpus): d.job_definition_arn for gpus, d in sorted(job_definitions.items())}
            )
        self.submit_function = self._function(
            "Submit",
            handler="lambdas.submit.handler.handler",
            timeout=Duration.minutes(5),
            environment=environment,
        )
        self._grant_submit(bucket, idempotency_table, job_queue, job_definitions)
        for suffix in PROMPT_SUFFIXES:
            bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED,
                s3n.LambdaDestination(self.submit_function),
                s3.NotificationKeyFilter(prefix=PROMPTS_PREFIX, suffix=suffix),
            )
        for schedule in schedules:
            self._schedule(schedule)

        # 2. Failure recorder: error records for array children that died without writing one.
        self.failure_function = self._function(
            "Failures",
            handler="lambdas.failures.handler.handler",
            timeout=Duration.minutes(2),
            environment={"BUCKET": bucket.bucket_name},
        )
        self._grant_failures(bucket)
        self.failed_jobs_rule = events.Rule(
            self,
            "FailedJobs",
            description="Batch jobs of the video queue that FAILED -> failure recorder",
            event_pattern=events.EventPattern(
                source=["aws.batch"],
                detail_type=["Batch Job State Change"],
                detail={"jobQueue": [job_queue.job_queue_arn], "status": ["FAILED"]},
            ),
            targets=[
                events_targets.LambdaFunction(
                    self.failure_function, dead_letter_queue=self.dead_letter_queue, retry_attempts=4
                )
            ],
        )

    def _function(
        self, id_: str, *, handler: str, timeout: Duration, environment: dict[str, str]
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, f"{id_}Logs", retention=self._log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        return lambda_.Function(
            self,
            id_,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            handler=handler,
            code=lambda_code(),
            layers=[self._layer],  # powertools v3 with its extras (pydantic v2, aws-xray-sdk)
            memory_size=512,
            timeout=timeout,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment={
                **environment,
                "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
            # Async invocations (S3, EventBridge, Scheduler) that still fail after retries land here.
            on_failure=destinations.SqsDestination(self.dead_letter_queue),
            retry_attempts=2,
        )

    def _grant_submit(
        self,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        queue: batch.IJobQueue,
        definitions: dict[int, batch.IJobDefinition],
    ) -> None:
        fn = self.submit_function
        read = [PROMPTS_PREFIX, SCHEDULES_PREFIX]
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="ReadPromptFiles",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[bucket.arn_for_objects(f"{p}*") for p in read],
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListPromptFiles",  # a deleted prompt file reads as 404, not 403
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in read]}},
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="WriteRunsAndRejections",
                actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(f"{p}*") for p in (RUNS_PREFIX, REJECTED_PREFIX)],
            )
        )
        table.grant_read_write_data(fn)
        acknowledge_prefixes(
            fn,
            bucket,
            {
                PROMPTS_PREFIX: "Reads any prompt file a user uploads under prompts/ (the trigger).",
                SCHEDULES_PREFIX: "Reads the prompt files that configured schedules name.",
                RUNS_PREFIX: "Writes runs/<run_id>/spec.json and run.json for run ids made per upload.",
                REJECTED_PREFIX: "Writes rejected/<key>.error.json for any rejected prompt file.",
            },
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="SubmitToThisQueue",
                actions=["batch:SubmitJob"],
                resources=[
                    queue.job_queue_arn,
                    *(d.job_definition_arn for _, d in sorted(definitions.items())),
                ],
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                # Dedupe (ListJobs by name) and items_per_job=auto (fleet size); no resource-level scoping.
                sid="InspectQueue",
                actions=[
                    "batch:ListJobs",
                    "batch:DescribeJobQueues",
                    "batch:DescribeComputeEnvironments",
                    "batch:DescribeJobDefinitions",
                ],
                resources=["*"],
            )
        )
        acknowledge(
            fn,
            {
                "AwsSolutions-IAM5[Resource::*]": "batch:ListJobs and batch:Describe* support no "
                "resource-level permissions; SubmitJob itself is limited to this queue and its definitions."
            },
        )

    def _grant_failures(self, bucket: s3.IBucket) -> None:
        fn = self.failure_function
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="ReadAndWriteRuns",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[bucket.arn_for_objects(f"{RUNS_PREFIX}*")],
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListRuns",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{RUNS_PREFIX}*"]}},
            )
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="InspectJobs",  # ListJobs and DescribeJobs accept no resource restriction
                actions=["batch:ListJobs", "batch:DescribeJobs"],
                resources=["*"],
            )
        )
        acknowledge(
            fn,
            {
                "AwsSolutions-IAM5[Resource::*]": "batch:ListJobs and batch:DescribeJobs support no "
                "resource-level permissions.",
            },
        )
        acknowledge_prefixes(
            fn, bucket, {RUNS_PREFIX: "Reads specs and writes error records under runs/<run_id>/ of any run."}
        )

    def _schedule(self, config: ScheduleConfig) -> None:
        # The payload of the submission contract; `time` is the firing time, so run ids are stable.
        payload = {
            "source": "wanbatch.schedule",
            "key": config.key,
            "time": scheduler.ContextAttribute.scheduled_time,
        }
        scheduler.Schedule(
            self,
            f"Schedule-{config.name}",
            description=f"Runs {config.key}",
            schedule=scheduler.ScheduleExpression.expression(
                config.expression, time_zone=TimeZone.of(config.timezone)
            ),
            target=scheduler_targets.LambdaInvoke(
                self.submit_function,
                input=scheduler.ScheduleTargetInput.from_object(payload),
                dead_letter_queue=self.dead_letter_queue,
                retry_attempts=3,
            ),
        )
        # The target's role (one per stack, shared by all schedules) may invoke the function and its versions.
        function_id = Stack.of(self).get_logical_id(self.submit_function.node.default_child)
        acknowledge(
            Stack.of(self),
            {
                f"AwsSolutions-IAM5[Resource::<{function_id}.Arn>:*]": "EventBridge Scheduler may invoke "
                "the submit function (and its versions, <arn>:*) and nothing else."
            },
        )
