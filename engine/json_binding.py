"""Bind parsed JSON to typed frozen dataclasses, collecting every problem with its JSON path.

Generic: it knows dataclasses, `list[...]`, `dict[str, ...]`, unions with None, `Any` and the
scalar types, nothing about seqport. engine/manifest.py uses it to build the schema from
seqport.json; a value that does not fit is reported as "$.path.to.key: expected X, got Y".
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def bind(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against type `tp` recursively; append problems, return the built value.

    Args:
        tp: a dataclass, a parametrised list/dict, a union, `Any` or a scalar type.
        value: parsed JSON.
        path: JSON path of `value` for messages, "$" at the root.
        problems: where each problem found is appended, as "path: what is wrong".

    Returns:
        The built value; meaningful only when no problem was appended.
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _bind_dataclass(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None) and _matches(option, value):
                return bind(option, value, path, problems)
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return value
        (item,) = typing.get_args(tp)
        return [bind(item, v, f"{path}[{k}]", problems) for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return value
        _, item = typing.get_args(tp)
        return {k: bind(item, v, f"{path}.{k}", problems) for k, v in value.items()}
    if not _matches(tp, value):
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
    return value


def _bind_dataclass(cls: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object, got {type(value).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            problems.append(f"{path}.{key}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = bind(hints[name], value[name], f"{path}.{name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{path}.{name}: missing")
    if problems:
        return None
    return cls(**kwargs)


def _matches(tp: Any, value: Any) -> bool:
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    if origin is not None:
        return isinstance(value, origin)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
