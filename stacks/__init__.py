"""CDK stacks and constructs of the deployment (see app.py and ../shared/DESIGN.md)."""
