"""configaformer: transformers built from small op configs (lists of dicts) or a higher-level layer config."""

from .builder import ConfigaFormer
from .causality import FutureLeak, find_future_leak
from .errors import ConfigError
from .io import load_config, save_config
from .layers import compile_layers
from .offsets import get_alibi
from .registry import Key, register, registered_ops

__all__ = ["ConfigaFormer", "ConfigError", "FutureLeak", "find_future_leak", "Key", "compile_layers", "get_alibi", "load_config", "register",
           "registered_ops", "save_config"]
