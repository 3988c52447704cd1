"""Loosely typed values (TOML, command-line text) as exactly the type a recipe field needs: a
bool is a bool (or true/false text from the command line), an integer is converted exactly
(never through a float, which rounds above 2**53), a float is finite, text is text. Which type
each field has, whether it may be None and what range it allows are the recipe's rules
(engine.recipe).
"""
from __future__ import annotations

import decimal
import math
from typing import Any

BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def convert(type_name: str, value: Any) -> Any:
    """value (not None) as the type named by a Recipe field's annotation ("bool", "int | None",
    "list[str]", ...); ValueError, TypeError or OverflowError when it is not one."""
    if type_name.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOL_TEXT:
            return BOOL_TEXT[value.lower()]
        raise ValueError(value)
    if type_name.startswith("list[str]"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ValueError(value)
        return [v.strip() for v in items if v.strip()]
    if type_name.startswith("list"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(value)
        return [whole(v) for v in items if str(v).strip()]
    if type_name.startswith("int"):
        return whole(value)
    if type_name.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(value)
        f = float(value)  # OverflowError for float(10**400)
        if not math.isfinite(f):  # inf/nan pass every range check, then diverge
            raise ValueError(value)
        return f
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def whole(value: Any) -> int:
    """An integer, exactly: 9007199254740993 stays itself (float() would give ...992). Text such
    as "1e3" is read as the decimal it writes; a float only where it is exact (below 2**53)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            exact = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(value) from None
        # adjusted(): the exponent; "1e999999999" must not build a billion-digit int
        if exact.is_finite() and exact.adjusted() <= 40 and exact == exact.to_integral_value():
            return int(exact)
        raise ValueError(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    raise ValueError(value)
