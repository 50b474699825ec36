"""What the CLI does: find the deployed stack, submit and follow runs in S3/Batch, render on this machine.

Plain functions over boto3 clients passed in (so tests give them moto's); no printing here.
"""
