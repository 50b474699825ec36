"""Contracts shared by the submit Lambda, the job container and the CLI (see ../shared/DESIGN.md).

Pure Python: importing this package creates no AWS client and needs no torch.
"""

__version__ = "0.1.0"
