"""Configs to and from YAML or JSON files, wrapped with a format version and optional metadata.

A saved file is {'format_version': 1, 'kind': 'layers' | 'ops', 'model': {...}, 'metadata': {...}}. A bare model
config (no wrapper), as a user might write by hand, loads too. YAML is read with safe_load only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from .errors import ConfigError

FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def config_kind(config: Mapping[str, Any]) -> str:
    """'layers' for a layer config, 'ops' for an op-level blocks config."""
    return "layers" if "layers" in config else "ops"


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file would be; mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def dump_document(document: Mapping[str, Any], path: PathLike) -> str:
    return json.dumps(document, indent=2) + "\n" if _is_json(Path(path)) else yaml.safe_dump(dict(document), sort_keys=False)


def save_config(config: Mapping[str, Any], path: PathLike, metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Save a layer or op config to .yaml/.yml/.json, with the format version and optional metadata."""
    document: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": config_kind(config), "model": dict(config)}
    if metadata:
        document["metadata"] = dict(metadata)
    write_text_atomic(path, dump_document(document, path))


def read_structured(path: PathLike) -> Any:
    """Parse a YAML or JSON file; a missing or malformed file is a one-line ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__})") from None
    try:
        return json.loads(text) if _is_json(path) else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid {'JSON' if _is_json(path) else 'YAML'}{line}: {reason}") from None


def load_document(path: PathLike) -> dict[str, Any]:
    """{'model': config, 'metadata': {...}, 'kind': ...} from a saved file or a bare config file."""
    data = read_structured(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "format_version" not in data:
        return {"model": data, "metadata": {}, "kind": config_kind(data)}
    version = data["format_version"]
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version: this library reads version {FORMAT_VERSION}, got {version!r}")
    if not isinstance(data.get("model"), dict):
        raise ConfigError(f"{path}: model: expected a mapping")
    return {"model": data["model"], "metadata": data.get("metadata") or {}, "kind": config_kind(data["model"])}


def load_config(path: PathLike) -> dict[str, Any]:
    """The model config (layer or op level) saved in a YAML or JSON file."""
    return load_document(path)["model"]
