"""Monitoring: an SNS topic for run completion and failure, alarms on what needs a human, a dashboard."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_batch as batch
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.nag import acknowledge


class Monitoring(Construct):
    """`.topic`, `.alarms`, `.dashboard`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        job_queue: batch.IJobQueue,
        functions: dict[str, lambda_.IFunction],
        dead_letter_queue: sqs.IQueue,
        failed_jobs_rule: events.IRule,
        notification_email: str | None,
    ) -> None:
        super().__init__(scope, id_)
        self.topic = sns.Topic(self, "Notifications", display_name="Wan video runs", enforce_ssl=True)
        acknowledge(
            self.topic,
            {
                "AwsSolutions-SNS2": "EventBridge cannot publish to a topic under the AWS-managed SNS key; "
                "messages carry only job names and states, not worth a $1/month customer key."
            },
        )
        if notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(notification_email))

        # 1. Run completion and failure: the run's own job (an array parent or a single job) ends.
        # Array children carry arrayProperties.index; they are left to the failure recorder.
        events.Rule(
            self,
            "RunFinished",
            description="Wan run jobs that SUCCEEDED or FAILED -> SNS",
            event_pattern=events.EventPattern(
                source=["aws.batch"],
                detail_type=["Batch Job State Change"],
                detail={
                    "jobQueue": [job_queue.job_queue_arn],
                    "status": ["SUCCEEDED", "FAILED"],
                    "jobName": [{"prefix": "wan-"}],
                    "arrayProperties": {"index": [{"exists": False}]},
                },
            ),
            targets=[
                events_targets.SnsTopic(
                    self.topic,
                    message=events.RuleTargetInput.from_text(
                        f"Run job {events.EventField.from_path('$.detail.jobName')} is "
                        f"{events.EventField.from_path('$.detail.status')} "
                        f"({events.EventField.from_path('$.detail.statusReason')})."
                    ),
                )
            ],
        )

        # 2. Alarms: any failed job, any Lambda error, anything in the dead-letter queue.
        failed_jobs = cloudwatch.Metric(
            namespace="AWS/Events",
            metric_name="TriggeredRules",  # the failure recorder's rule fires once per FAILED job
            dimensions_map={"RuleName": failed_jobs_rule.rule_name},
            statistic="Sum",
            period=Duration.minutes(5),
        )
        alarm_specs: list[tuple[str, cloudwatch.IMetric, str]] = [
            ("FailedJobs", failed_jobs, "A Batch job of the video queue FAILED"),
            (
                "DeadLetters",
                dead_letter_queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
                "An event could not be delivered to a Lambda: see the dead-letter queue",
            ),
        ]
        for name, function in functions.items():
            alarm_specs.append(
                (
                    f"{name}Errors",
                    function.metric_errors(period=Duration.minutes(5)),
                    f"The {name} Lambda failed",
                )
            )
        self.alarms = []
        for id_, metric, description in alarm_specs:
            alarm = cloudwatch.Alarm(
                self,
                id_,
                metric=metric,
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
            self.alarms.append(alarm)

        # 3. Dashboard: the same signals over time.
        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.days(1))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Lambda invocations / errors",
                left=[f.metric_invocations() for f in functions.values()],
                right=[f.metric_errors() for f in functions.values()],
            ),
            cloudwatch.GraphWidget(title="Failed Batch jobs", left=[failed_jobs.with_(label="Failed jobs")]),
            cloudwatch.SingleValueWidget(
                title="Dead letters",
                metrics=[dead_letter_queue.metric_approximate_number_of_messages_visible()],
            ),
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms),
        )
