"""How a config key is declared: its default, help text, and the values it allows (choices, or a numeric range).

`base.py` declares every key with `key(...)` inside `Section`s; `validate.py` checks each value against its
declaration, so a new key gets its type, range and finiteness checks by being declared.
"""

import dataclasses
import math
from typing import Any

import ml_collections

Bound = int | float | None


@dataclasses.dataclass(frozen=True)
class Key:
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    gt: Bound = None
    ge: Bound = None
    lt: Bound = None
    le: Bound = None

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)

    def allowed(self) -> str:
        """The allowed values in words: 'one of: a, b', '> 0', 'in [0, 1)'."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        low = (f"({self.gt}" if self.gt is not None else f"[{self.ge}" if self.ge is not None else "")
        high = (f"{self.lt})" if self.lt is not None else f"{self.le}]" if self.le is not None else "")
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        return f"{'<' if high[-1] == ')' else '<='} {high[:-1]}" if high else "any value"

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (None: it is)."""
        if self.kind is bool and not isinstance(value, bool):
            return f"must be true or false, got {type(value).__name__}"
        if self.numeric and (isinstance(value, bool) or not isinstance(value, self.kind | int)):
            return f"must be a number ({self.kind.__name__}), got {type(value).__name__}"
        if self.kind is str and not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if self.choices and value not in self.choices:
            return f"is not {self.allowed()}"
        if self.numeric:
            if not math.isfinite(value):
                return f"is not a finite number; it must be {self.allowed()}"
            if ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                    or (self.lt is not None and not value < self.lt)
                    or (self.le is not None and not value <= self.le)):
                return f"is out of range: it must be {self.allowed()}"
        return None


def key(default: Any, help: str, choices: tuple[str, ...] = (), *, gt: Bound = None, ge: Bound = None,
        lt: Bound = None, le: Bound = None) -> Key:
    """Declare a key. A number must say its range (gt/ge and/or lt/le); a string may list its choices."""
    k = Key(default, help, tuple(choices), gt, ge, lt, le)
    if k.numeric and (gt, ge, lt, le) == (None,) * 4:
        raise TypeError(f"numeric config key with default {default!r} ({help!r}) declares no range; "
                        "give gt/ge and/or lt/le")
    if k.choices and default not in k.choices:
        raise TypeError(f"default {default!r} is not among its own choices {k.choices}")
    if k.numeric and k.problem(default):
        raise TypeError(f"default {default!r} ({help!r}) {k.problem(default)}")
    return k


class Section:
    """Keys and sub-sections, in the order they are declared (by attribute assignment)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_items", {})

    def __setattr__(self, name: str, value: "Key | Section") -> None:
        if not isinstance(value, Key | Section):
            raise TypeError(f"config key '{name}' must be declared with key(default, help, ...), got {value!r}")
        self._items[name] = value

    def keys(self, prefix: str = "") -> dict[str, Key]:
        """Every key, by dotted name ('model.d_model')."""
        out = {}
        for name, item in self._items.items():
            if isinstance(item, Section):
                out.update(item.keys(f"{prefix}{name}."))
            else:
                out[prefix + name] = item
        return out

    def config(self) -> ml_collections.ConfigDict:
        """A fresh ConfigDict of the defaults."""
        c = ml_collections.ConfigDict()
        for name, item in self._items.items():
            c[name] = item.config() if isinstance(item, Section) else item.default
        return c
