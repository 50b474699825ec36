"""Network: a VPC made here (no lookups, so synth works offline) and the Batch instances' security group.

`public` (default) costs nothing while idle: instances get public IPs in public subnets, behind a
security group with no inbound rules, as the original single-instance deployment was reached only
through SSM. `private` puts instances in private subnets behind one NAT gateway (about $33/month idle).
Both get a free S3 gateway endpoint, so video uploads and spec reads stay on the AWS network.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct


class Network(Construct):
    """`.vpc`, `.job_subnets` (where instances and EFS mount targets go), `.batch_security_group`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        mode: str,
        availability_zones: tuple[str, ...],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id_)
        private = mode == "private"
        subnets = [ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=22)]
        if private:
            subnets.append(
                ec2.SubnetConfiguration(
                    name="jobs", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                )
            )
        zones = {"availability_zones": list(availability_zones)} if availability_zones else {"max_azs": 3}
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr("10.40.0.0/16"),
            nat_gateways=1 if private else 0,
            subnet_configuration=subnets,
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
            **zones,
        )
        self.job_subnets = ec2.SubnetSelection(
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS if private else ec2.SubnetType.PUBLIC
        )
        # Rejected connections only: enough to debug a security group, cheap at this traffic.
        flow_logs = logs.LogGroup(
            self, "FlowLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.batch_security_group = ec2.SecurityGroup(
            self,
            "BatchSecurityGroup",
            vpc=self.vpc,
            description="Batch instances: egress only (image pulls, S3, Hugging Face); no inbound rules",
            allow_all_outbound=True,
        )
