"""Validate a Call Control request body against the official SDK's ``*Params`` TypedDict.

The ``telnyx`` SDK's request types (``CallDialParams``, ``ActionAnswerParams``, ...) are
generated from Telnyx's OpenAPI spec: required keys, value types, enums (``Literal``), wire
aliases (``from_`` is sent as ``from``), nested objects. :func:`check_params` walks one of
them and returns every problem as an :class:`Issue` naming the JSON pointer, so the fake can
answer 422 the way Telnyx does. Keys the type does not declare are returned separately
(:attr:`ParamCheck.unknown`): Telnyx ignores them, the fake records them.

    check = check_params(CallDialParams, body)
    check.issues    # [Issue("/connection_id", "missing"), Issue("/stream_track", "enum", ...)]
    check.unknown   # ["/stream_bidirectional_sampling_rat"]
"""

from __future__ import annotations

import collections.abc
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Union

import typing_extensions


@dataclass(frozen=True, slots=True)
class Issue:
    """One invalid value: ``kind`` is ``missing``, ``type`` or ``enum``."""

    pointer: str
    kind: str
    detail: str = ""


@dataclass(slots=True)
class ParamCheck:
    issues: list[Issue] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues


@dataclass(frozen=True, slots=True)
class _Field:
    wire: str
    tp: Any
    required: bool


@cache
def _fields(td: type) -> tuple[_Field, ...]:
    hints = typing_extensions.get_type_hints(td, include_extras=True)
    declared_required = getattr(td, "__required_keys__", frozenset())
    out = []
    for name, tp in hints.items():
        wire, required = name, name in declared_required
        while True:  # Required[Annotated[str, PropertyInfo(alias="from")]] and the like
            origin = typing_extensions.get_origin(tp)
            if origin in (typing_extensions.Required, typing.Required):
                required = True
            elif origin in (typing_extensions.NotRequired, typing.NotRequired):
                required = False
            elif origin is typing_extensions.Annotated:
                for m in getattr(tp, "__metadata__", ()):
                    alias = getattr(m, "alias", None)
                    if isinstance(alias, str):
                        wire = alias
            else:
                break
            tp = typing_extensions.get_args(tp)[0]
        out.append(_Field(wire, tp, required))
    return tuple(out)


def _strip_required(tp: Any) -> Any:
    origin = typing_extensions.get_origin(tp)
    if origin in (typing_extensions.Required, typing_extensions.NotRequired,
                  typing.Required, typing.NotRequired):
        return _strip_required(typing_extensions.get_args(tp)[0])
    if origin is typing_extensions.Annotated:
        return _strip_required(typing_extensions.get_args(tp)[0])
    return tp


def _is_typeddict(tp: Any) -> bool:
    return typing_extensions.is_typeddict(tp)


def check_params(td: type, body: object) -> ParamCheck:
    """Every problem of ``body`` against TypedDict ``td`` (empty when valid)."""
    result = ParamCheck()
    _check_td(td, body, "", result)
    return result


def _check_td(td: type, value: object, ptr: str, result: ParamCheck) -> None:
    if not isinstance(value, dict):
        result.issues.append(Issue(ptr or "/", "type", "expected an object"))
        return
    fields = _fields(td)
    known = {f.wire for f in fields}
    for f in fields:
        if f.wire not in value:
            if f.required:
                result.issues.append(Issue(f"{ptr}/{f.wire}", "missing"))
            continue
        _check_value(f.tp, value[f.wire], f"{ptr}/{f.wire}", result)
    result.unknown.extend(f"{ptr}/{k}" for k in value if k not in known)


def _check_value(tp: Any, value: object, ptr: str, result: ParamCheck) -> None:
    problems = ParamCheck()
    if _matches(tp, value, ptr, problems):
        result.issues.extend(problems.issues)
        result.unknown.extend(problems.unknown)
        return
    result.issues.extend(problems.issues or [Issue(ptr, "type", f"expected {_name(tp)}")])


def _matches(tp: Any, value: object, ptr: str, result: ParamCheck) -> bool:
    """Whether ``value`` has type ``tp``; nested problems go to ``result``."""
    tp = _strip_required(tp)
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if tp is Any or tp is object:
        return True
    if origin in (Literal, typing_extensions.Literal):
        if value in args and type(value) in {type(a) for a in args}:
            return True
        result.issues.append(Issue(ptr, "enum", f"must be one of {list(args)}"))
        return True  # reported as an enum issue, not a type mismatch
    if origin in (Union, types.UnionType):
        for arg in args:
            trial = ParamCheck()
            if _matches(arg, value, ptr, trial) and not trial.issues:
                result.unknown.extend(trial.unknown)
                return True
        # report the first alternative's enum issue if any, else a type mismatch
        return False
    if _is_typeddict(tp):
        if not isinstance(value, dict):
            return False
        _check_td(tp, value, ptr, result)
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (dict, collections.abc.Mapping, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            return False
        vt = args[1] if len(args) == 2 else Any
        for k, v in value.items():
            _check_value(vt, v, f"{ptr}/{k}", result)
        return True
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or (
            getattr(origin, "__name__", "") == "SequenceNotStr"):
        if not isinstance(value, list):
            return False
        et = args[0] if args else Any
        for i, item in enumerate(value):
            _check_value(et, item, f"{ptr}/{i}", result)
        return True
    if getattr(tp, "__name__", "") == "SequenceNotStr":
        return isinstance(value, list)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an SDK type this checker does not model: accept


def _name(tp: Any) -> str:
    origin = typing_extensions.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_name(a) for a in typing_extensions.get_args(tp))
    if _is_typeddict(tp):
        return "object"
    names = {str: "string", int: "integer", bool: "boolean", float: "number"}
    if tp in names:
        return names[tp]
    if origin in (dict, collections.abc.Mapping):
        return "object"
    if origin is not None:
        return "array"
    return getattr(tp, "__name__", str(tp))
