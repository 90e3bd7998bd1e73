"""The op library. Importing it registers every op type; a new op is one small module added here."""

from . import attention, dense, gating, heads, norms, sequence, streams  # noqa: F401  (registers the ops)
from .attention import FusedAttention
from .base import Op

__all__ = ["FusedAttention", "Op"]
