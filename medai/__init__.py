"""medai: imaging-AI pilot toolkit (collection campaign, training, inference)."""

import logging

__all__ = ["__version__"]
__version__ = "0.1.0"

# The library never decides where log output goes; the CLI does (pynetdicom's habit).
logging.getLogger(__name__).addHandler(logging.NullHandler())
