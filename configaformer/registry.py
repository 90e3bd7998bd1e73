"""The op registry: `@register("linear")` maps a config's `type` string to its op class.

Each op class declares its keys (`Key`: default, accepted types, allowed values, a check). `resolve_keys` fills
defaults and refuses unknown keys, missing required keys and bad values, naming the key, before the op is built.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One declared op key: its default (or REQUIRED), accepted Python types, allowed values and an extra check.

    `check` returns an error text for a bad value, or None.
    """

    default: Any = REQUIRED
    types: tuple = ()
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], Optional[str]]] = None


class OpError(Exception):
    """Raised while building an op; the builder adds the block and op to `key` and `message`."""

    def __init__(self, key: Optional[str], message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


_OPS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an op class buildable as `{'type': name, ...}`."""

    def wrap(cls: type) -> type:
        if name in _OPS:
            raise RuntimeError(f"op type {name!r} is registered twice")
        cls.type_name = name
        _OPS[name] = cls
        return cls

    return wrap


def registered_ops() -> list[str]:
    return sorted(_OPS)


def suggest(word: str, options: Any) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def op_class(name: object) -> type:
    if not isinstance(name, str) or name not in _OPS:
        raise OpError("type", f"unknown op type {name!r}{suggest(name, _OPS)}; known: {', '.join(sorted(_OPS))}")
    return _OPS[name]


def _type_names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_value(key: str, spec: Key, value: Any) -> None:
    """Raise OpError when `value` does not fit `spec`."""
    if spec.types:
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok and float in spec.types and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # an int is a fine float
        if not ok:
            raise OpError(key, f"expected {_type_names(spec.types)}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise OpError(key, f"expected one of {', '.join(map(repr, spec.choices))}, got {value!r}{suggest(value, spec.choices)}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise OpError(key, f"{problem}, got {value!r}")


def resolve_keys(keys: Mapping[str, Key], given: Mapping[str, Any], ignore: tuple = ("type",)) -> dict[str, Any]:
    """Validate `given` against the declared `keys` and fill in defaults."""
    for name in given:
        if name not in keys and name not in ignore:
            raise OpError(name, f"unknown key{suggest(name, keys)}; known: {', '.join(sorted(keys))}")
    resolved = {}
    for name, spec in keys.items():
        if name in given:
            check_value(name, spec, given[name])
            resolved[name] = given[name]
        elif spec.default is REQUIRED:
            raise OpError(name, "required key is missing")
        else:
            resolved[name] = spec.default
    return resolved


def positive(value: Any) -> Optional[str]:
    return None if value > 0 else "expected a positive number"


def probability(value: Any) -> Optional[str]:
    return None if 0 <= value < 1 else "expected a probability in [0, 1)"
