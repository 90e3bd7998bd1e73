"""configaformer: transformers built from small op configs (lists of dicts) or a higher-level layer config.

Names are imported on first use, so that reading and writing configs (`load_config`, `save_config`) does not
import torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ConfigaFormer": ".builder", "FutureLeak": ".causality", "find_future_leak": ".causality", "DecodeCache": ".decode",
    "ConfigError": ".errors", "load_config": ".io", "save_config": ".io", "compile_layers": ".layers",
    "get_alibi": ".offsets", "Key": ".registry", "register": ".registry", "registered_ops": ".registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'configaformer' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
