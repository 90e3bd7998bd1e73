"""Symbolic tensor shapes, known and checked at build time before any tensor exists.

A dim is a positive int or a `Sym`: a named size such as 'B' or 'L_in', times a rational factor so that
derived lengths stay expressions over their symbol ('L_in/2' after down-sampling by 2, '2*L_in' after
up-sampling). One symbol means one size everywhere: 'B' never equals 'BSZ'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

_SYM_RE = re.compile(r"^(?:(\d+)\*)?([A-Za-z_]\w*)(?:/(\d+))?$")


@dataclass(frozen=True)
class Sym:
    """A symbolic size: `factor` times the size named `name`."""

    name: str
    factor: Fraction = Fraction(1)

    def scaled(self, factor: Fraction) -> Sym:
        return Sym(self.name, self.factor * factor)

    def __str__(self) -> str:
        num = "" if self.factor.numerator == 1 else f"{self.factor.numerator}*"
        den = "" if self.factor.denominator == 1 else f"/{self.factor.denominator}"
        return f"{num}{self.name}{den}"


Dim = Union[int, Sym]
Shape = tuple  # tuple[Dim, ...]


def parse_dim(value: object) -> Dim:
    """'B', 'L_in/2', '2*L_in' or a positive int -> Dim; anything else raises ValueError."""
    if isinstance(value, Sym):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"a dim must be positive, got {value}")
        return value
    if isinstance(value, str):
        match = _SYM_RE.match(value.strip())
        if match:
            num, name, den = match.groups()
            return Sym(name, Fraction(int(num or 1), int(den or 1)))
    raise ValueError(f"a dim must be a positive int or a symbol such as 'B' or 'L_in', got {value!r}")


def parse_shape(values: object) -> Shape:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"a shape must be a non-empty list of dims, got {values!r}")
    return tuple(parse_dim(v) for v in values)


def format_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def shape_to_config(shape: Shape) -> list:
    """The plain (YAML-safe) form of a shape: ints stay ints, symbols become strings."""
    return [d if isinstance(d, int) else str(d) for d in shape]


def divide(dim: Dim, k: int) -> Dim:
    """dim / k; an int must divide exactly, a symbol becomes an expression."""
    if isinstance(dim, int):
        if dim % k:
            raise ValueError(f"{dim} is not divisible by {k}")
        return dim // k
    return dim.scaled(Fraction(1, k))


def multiply(dim: Dim, k: int) -> Dim:
    return dim * k if isinstance(dim, int) else dim.scaled(Fraction(k))


def add(dims: Sequence[Dim]) -> Dim:
    """Sum of sizes: all ints, or all multiples of one symbol."""
    if all(isinstance(d, int) for d in dims):
        return sum(dims)
    names = {d.name for d in dims if isinstance(d, Sym)}
    if len(names) == 1 and all(isinstance(d, Sym) for d in dims):
        return Sym(names.pop(), sum((d.factor for d in dims), Fraction(0)))
    raise ValueError(f"cannot add sizes {', '.join(map(str, dims))}")
