"""The whole flow on one machine: moto stands in for S3, Batch and DynamoDB; a local executor runs jobs."""
