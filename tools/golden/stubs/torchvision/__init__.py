"""Import-only stand-in for torchvision (absent from .venv-ref); see ../README.md."""

from torchvision import models, transforms  # noqa: F401

__version__ = "0.0.0+stub"
