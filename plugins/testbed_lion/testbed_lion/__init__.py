"""testbed-lion: an example third-party testbed plugin providing the Lion optimizer."""

from .optim import Lion

__version__ = "0.1.0"

__all__ = ["Lion", "__version__"]
