"""gankd: compress GAN generators by knowledge distillation."""

from gankd.errors import GankdError

__all__ = ["GankdError"]
__version__ = "0.1.0"
