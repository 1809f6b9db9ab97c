"""Option checks shared by vitlab's packages (it imports only `vitlab.errors`, so every layer above can): one helper
per kind of value, each raising `vitlab.errors.ConfigError` with a message that names the option, the value given and
what to give instead.

Integers are accepted as Python ints or anything ``operator.index`` takes (NumPy or 0-d torch integers), never
``bool``; the helpers return plain Python values, so hyper-parameters saved from them load with
``torch.load(weights_only=True)``.

Example:
    >>> import numpy as np
    >>> check_int("batch_size", np.int64(8), minimum=1)
    8
    >>> check_int("batch_size", 2.5, minimum=1)
    Traceback (most recent call last):
    ...
    vitlab.errors.ConfigError: batch_size must be an int >= 1, got 2.5 (float)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
import types
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np

from vitlab.errors import ConfigError

__all__ = ["MAX_SEED", "check_bool", "check_field_types", "check_float", "check_int", "check_optional_int",
           "check_path", "check_probability", "check_seed", "check_stats"]

#: Largest seed accepted (``torch.Generator.manual_seed`` takes 64-bit values; vitlab keeps seeds non-negative int64).
MAX_SEED = 2**63 - 1


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int in {minimum}..{'2**63 - 1' if maximum == MAX_SEED else maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    return "an int" if maximum is None else f"an int <= {maximum}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              fix: str = "") -> int:
    """``value`` as a Python int within ``[minimum, maximum]``; bools, floats and strings are refused.

    Args:
        name: the option's name, used in the message.
        value: what the user gave.
        minimum, maximum: inclusive bounds, or None.
        fix: extra advice appended to the message.
    """
    suffix = f": {fix}" if fix else ""
    number = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ConfigError(f"{name} must be {_int_range(minimum, maximum)}, got {_describe(value)}{suffix}")
    return int(number)


def check_optional_int(name: str, value: Any, *, minimum: int | None = None, fix: str = "") -> int | None:
    """None, or `check_int` of ``value``."""
    if value is None:
        return None
    try:
        return check_int(name, value, minimum=minimum, fix=fix)
    except ConfigError as err:
        raise ConfigError(str(err).replace(" must be ", " must be None or ", 1)) from None


def check_seed(name: str, value: Any) -> int:
    """A seed: an int in ``0 .. 2**63 - 1``."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED, fix="give a non-negative integer seed, e.g. 0")


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                below_maximum: bool = False, fix: str = "") -> float:
    """``value`` as a finite Python float within ``[minimum, maximum]`` (``[minimum, maximum)`` with
    `below_maximum`); ints are fine, bools, strings and NaN are refused."""
    low = "" if minimum is None else f"{minimum} <= "
    high = "" if maximum is None else (f" < {maximum}" if below_maximum else f" <= {maximum}")
    wanted = f"a finite number{' with ' + low + name + high if low or high else ''}"
    suffix = f": {fix}" if fix else ""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    number = float(value) if ok else math.nan
    if (not math.isfinite(number) or (minimum is not None and number < minimum)
            or (maximum is not None and (number >= maximum if below_maximum else number > maximum))):
        raise ConfigError(f"{name} must be {wanted}, got {_describe(value)}{suffix}")
    return number


def check_probability(name: str, value: Any) -> float:
    """``value`` as a float if it is a real number (Python or NumPy, not a bool or str) in [0, 1]: a transform's
    ``p``, a dropout or drop-path rate."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1] (a Python or NumPy float), got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (or NumPy bool); ``"yes"``, ``1`` and the like are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def check_path(name: str, value: Any) -> str | None:
    """None, or a ``str`` / ``os.PathLike`` path as ``str``."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise ConfigError(f"{name} must be a folder path (str or pathlib.Path) or None, got {_describe(value)}")
    return os.fspath(value)


def check_stats(name: str, values: Any, *, positive: bool = False) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers (all > 0 with `positive`), e.g. per-channel ``mean`` / ``std``."""
    rule = "finite numbers > 0" if positive else "finite numbers"
    fix = f"give {name} as a list of {rule}, one per channel, e.g. [0.5] or [0.485, 0.456, 0.406]"
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
        raise ConfigError(f"{name} must be a non-empty list of {rule}, got {_describe(values)}: {fix}")
    for value in values:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        if not ok or not math.isfinite(float(value)) or (positive and float(value) <= 0):
            raise ConfigError(f"{name} must hold {rule}, got {list(values)!r}: {fix}")
    return tuple(float(v) for v in values)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits a type hint (``bool`` is not an ``int``; an ``int`` is a ``float``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_field_types(instance: Any, where: str) -> None:
    """Check every field of a dataclass instance against its type annotation (the values a YAML file gave it).

    Understands ``int``, ``float`` (an int is accepted), ``bool``, ``str``, ``None``, unions, ``list[X]``,
    ``dict[K, V]``, ``Any`` and classes; ``bool`` is never an ``int``.

    Raises:
        ConfigError: ``<where>.<field> must be <type>, got <value> (<its type>)``.

    Example:
        >>> @dataclasses.dataclass
        ... class Sweep:
        ...     dims: list[int] | None = None
        >>> check_field_types(Sweep(dims=[10, "100"]), "sweep")
        Traceback (most recent call last):
        ...
        vitlab.errors.ConfigError: sweep.dims must be list[int] | null, got [10, '100'] (list)
    """
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if not _matches(value, hints[field.name]):
            hint = hints[field.name]
            shown = (hint.__name__ if isinstance(hint, type) else str(hint)).replace("typing.", "")
            shown = shown.replace("NoneType", "null").replace("None", "null")
            raise ConfigError(f"{where}.{field.name} must be {shown}, got {_describe(value)}")
