"""The messages between a job's child process and its supervisor: JSON, one object per line.

A request goes to the child, and its result comes back, as JSON: frozen dataclasses with paths,
tuples, enums and plain values, each tagged with its class so that the other side rebuilds the
same object. Nothing is ever unpickled; only dataclasses and enums of modules that the process
can already import are rebuilt, never arbitrary callables.

Callable fields of a request (a generation's `on_text`) cannot cross a process: the child gets a
stand-in that sends each call back as a `call` event, and the supervisor makes the call on the
original request.

Events are the CLI's `--json-progress` lines plus a few of the child's own:
    {"event": "progress", "done": 3.0, "total": 10.0, "text": "..."}
    {"event": "log", "level": "info", "text": "..."}
    {"event": "call", "name": "on_text", "args": ["piece"]}
    {"event": "part", "path": "/out/model.gguf.part"}     (an output the job is writing)
    {"event": "result", "status": "done", "value": ..., "error": null, "exit_code": 0,
     "seconds": 1.2}
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.errors import OptionFact
from app.core.jobs import JobResult, LogLevel

CALLBACK = "__callback__"


class WireError(ValueError):
    """A value cannot be sent between processes, or a message cannot be read back."""


def progress_event(done: float, total: float, text: str = "") -> dict[str, Any]:
    return {"event": "progress", "done": done, "total": total, "text": text}


def log_event(level: LogLevel, text: str) -> dict[str, Any]:
    return {"event": "log", "level": level, "text": text}


def call_event(name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    return {"event": "call", "name": name, "args": [encode(a) for a in args]}


def part_event(path: Path) -> dict[str, Any]:
    return {"event": "part", "path": str(path)}


def result_event(result: JobResult) -> dict[str, Any]:
    return {"event": "result", "status": result.status, "value": encode(result.value),
            "error": result.error, "exit_code": result.exit_code, "seconds": result.seconds,
            "option": encode(result.option)}


def result_from_event(event: dict[str, Any]) -> JobResult:
    status = event.get("status")
    if status not in ("done", "failed", "cancelled"):
        raise WireError(f"unknown job status {status!r}")
    option = decode(event.get("option"))
    if option is not None and not isinstance(option, OptionFact):
        raise WireError(f"not an option: {option!r}")
    return JobResult(status, value=decode(event.get("value")), error=event.get("error"),
                     exit_code=int(event.get("exit_code", 0)),
                     seconds=float(event.get("seconds", 0.0)), option=option)


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, allow_nan=True, separators=(",", ":"))


def loads(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise WireError(f"not a JSON message: {line[:200]!r}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise WireError(f"not an event: {line[:200]!r}")
    return event


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: Any) -> type:
    if not isinstance(name, str) or ":" not in name:
        raise WireError(f"not a class name: {name!r}")
    module_name, _, qualname = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise WireError(f"unknown class {name}") from exc
    if not isinstance(target, type):
        raise WireError(f"{name} is not a class")
    return target


def callable_fields(request: Any) -> tuple[str, ...]:
    """The fields of a request dataclass that hold a function (set, not None)."""
    return tuple(f.name for f in dataclasses.fields(request)
                 if callable(getattr(request, f.name, None)))


def encode(value: Any) -> Any:
    """A JSON-ready form of `value`; `WireError` for what cannot cross a process."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return {"__enum__": _class_name(type(value)), "value": encode(value.value)}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return {"__float__": repr(float(value))} if not math.isfinite(value) else float(value)
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(v) for v in value], "frozen": isinstance(value, frozenset)}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            item = getattr(value, f.name)
            fields[f.name] = {CALLBACK: f.name} if callable(item) and not isinstance(
                item, type) else encode(item)
        return {"__dataclass__": _class_name(type(value)), "fields": fields}
    if type(value).__module__ == "numpy" and hasattr(value, "tobytes") and value.ndim:
        # An array (an importance matrix's weights in a planned program): its bytes, exactly.
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape),
                "data": base64.b64encode(value.tobytes(order="C")).decode("ascii")}
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return encode(value.item())  # a numpy scalar
    raise WireError(f"a {type(value).__name__} cannot be sent to or from a job's process")


Callbacks = Callable[[str], Any] | None


def decode(data: Any, callbacks: Callbacks = None) -> Any:
    """The value `encode` made `data` from; a callable field gets `callbacks(its name)`."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, callbacks) for v in data]
    if not isinstance(data, dict):
        raise WireError(f"cannot decode a {type(data).__name__}")
    if "__path__" in data:
        return Path(data["__path__"])
    if "__bytes__" in data:
        try:
            return base64.b64decode(data["__bytes__"], validate=True)
        except (TypeError, ValueError) as exc:
            raise WireError(f"not bytes: {exc}") from exc
    if "__tuple__" in data:
        return tuple(decode(v, callbacks) for v in _items(data, "__tuple__"))
    if "__float__" in data:
        try:
            return float(data["__float__"])
        except (TypeError, ValueError) as exc:
            raise WireError(f"not a float: {exc}") from exc
    if "__set__" in data:
        items = [_hashable(decode(v, callbacks)) for v in _items(data, "__set__")]
        return frozenset(items) if data.get("frozen") else set(items)
    if "__dict__" in data:
        pairs = [_pair(item) for item in _items(data, "__dict__")]
        return {_hashable(decode(k, callbacks)): decode(v, callbacks) for k, v in pairs}
    if "__ndarray__" in data:
        return _decode_array(data)
    if "__enum__" in data:
        cls = _resolve(data["__enum__"])
        if not issubclass(cls, enum.Enum):
            raise WireError(f"{data['__enum__']} is not an enum")
        return cls(decode(data.get("value")))
    if "__dataclass__" in data:
        return _decode_dataclass(data, callbacks)
    raise WireError(f"cannot decode an object with keys {sorted(data)[:5]}")


def _decode_array(data: dict[str, Any]) -> Any:
    import numpy as np

    try:
        dtype = np.dtype(data["__ndarray__"])
        if dtype.hasobject:
            raise TypeError("object arrays are not data")
        shape = tuple(int(n) for n in data["shape"])
        raw = base64.b64decode(data["data"], validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (TypeError, ValueError, KeyError) as exc:
        raise WireError(f"not an array: {exc}") from exc


def _items(data: dict[str, Any], key: str) -> list[Any]:
    # A list, as encode writes it: anything else (a string would iterate as characters) is a
    # broken or hostile message, refused as one.
    items = data[key]
    if not isinstance(items, list):
        raise WireError(f"{key} holds a {type(items).__name__}, not a list")
    return items


def _pair(item: Any) -> list[Any]:
    if not isinstance(item, list) or len(item) != 2:
        raise WireError(f"not a key and value: {str(item)[:100]}")
    return item


def _hashable(value: Any) -> Any:
    # A set member or dict key: a list was a tuple before JSON. Anything still unhashable
    # (a dict, a nested list) cannot have been encoded from a set or a key.
    value = tuple(value) if isinstance(value, list) else value
    try:
        hash(value)
    except TypeError as exc:
        raise WireError(f"not a set member or key: {exc}") from exc
    return value


def _decode_dataclass(data: dict[str, Any], callbacks: Callbacks) -> Any:
    cls = _resolve(data["__dataclass__"])
    if not dataclasses.is_dataclass(cls):
        raise WireError(f"{data['__dataclass__']} is not a dataclass")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    fields = data.get("fields")
    if not isinstance(fields, dict) or not set(fields) <= known:
        raise WireError(f"{data['__dataclass__']}: fields do not match the class")
    values = {}
    for name, item in fields.items():
        if isinstance(item, dict) and set(item) == {CALLBACK}:
            values[name] = callbacks(name) if callbacks is not None else None
        else:
            values[name] = decode(item, callbacks)
    try:
        return cls(**values)
    except TypeError as exc:
        raise WireError(f"{data['__dataclass__']}: {exc}") from exc
