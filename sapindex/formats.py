"""Reading and writing sapindex's own JSON artifacts: one atomic writer, one versioned reader.

Why one of each: the bundle manifest, the index metadata, the calibration record, the eval
report and the encoding cache's key are all small JSON files that a killed process must never
leave half-written, and that a reader must refuse with one clear line when they are not ours
or come from a newer sapindex. Each artifact names itself with ``format`` and a version key
(``format_version`` for the bundle and the index, ``version`` for the calibration and the
report, as they were first written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from sapindex.errors import SapIndexError

#: ``format`` of ``sapindex eval``'s report.json (written by :mod:`sapindex.eval.report`; ``index --budget-from``
#: reads it through :func:`sapindex.compression.budget_scale_from`, without importing the eval).
EVAL_REPORT_FORMAT = "sapindex-eval"


def write_json_atomic(path: str | Path, obj, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented JSON to ``path`` so that readers see the old file or the new
    one, never a torn one: a temporary sibling, fsync, rename, then fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=sort_keys)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def read_json(path: str | Path, what: str, *, missing: str | None = None) -> dict:
    """A JSON object from ``path``; :class:`SapIndexError` naming the file (``what`` says what it
    should have been) when it is missing, unreadable, not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SapIndexError(f"{path}: {missing or what + ' does not exist'}") from None
    except json.JSONDecodeError as exc:
        raise SapIndexError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg} (not a readable {what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SapIndexError(f"{path}: not a readable {what}: {exc}") from None
    if not isinstance(data, dict):
        raise SapIndexError(f"{path}: not a {what} (expected a JSON object)")
    return data


def read_artifact(path: str | Path, fmt: str, max_version: int, what: str, *, version_key: str = "format_version",
                  missing: str | None = None) -> dict:
    """One of sapindex's artifacts: ``format`` must be ``fmt`` and its version at most
    ``max_version`` (a newer one asks the user to upgrade; a record without a version is 0)."""
    data = read_json(path, what, missing=missing)
    if data.get("format") != fmt:
        raise SapIndexError(f"{path}: not a {what} (format is not {fmt!r})")
    version = data.get(version_key, 0)
    if not isinstance(version, int) or version > max_version:
        raise SapIndexError(f"{path}: {what} format {version} is newer than this sapindex reads ({max_version}); "
                            "upgrade sapindex")
    return data


def jsonable(value):
    """``value`` with every record, tuple and dict inside it turned into what :mod:`json` writes
    (a dict, a list), so that a value compares equal to its JSON read back."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_JSON_KEY = "json_key"


def json_field(key: str):
    """A record field whose JSON key is not its name: keys such as ``min_kept_jaccard_at_0.1``
    are not Python identifiers, and a written artifact's keys never change."""
    return dataclasses.field(metadata={_JSON_KEY: key})


class JsonRecord:
    """Base of a frozen dataclass that is one JSON object of an artifact: one key per field, in
    field order (a field that is a record is a nested object).

    Why: calibration.json and the export validation report were dict literals in the middle of
    long functions, their keys spelt only there; as records each key is declared once, with a
    type, and the reader sits beside the writer: ``from_json(r.to_json()) == r``. Fields typed
    ``tuple`` hold JSON lists (so a frozen record holds nothing to change), fields typed
    ``dict`` hold JSON objects as they are, and a key an older file lacks reads as the field's
    default.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on each subclass

    def to_json(self) -> dict:
        """The JSON object, keys in field order, as :func:`write_json_atomic` writes it."""
        return {_key(f): jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict):
        """The record of a JSON object that :meth:`to_json` (or an older sapindex) wrote; keys the
        record does not know are ignored, a missing key without a default is an error."""
        fields = dataclasses.fields(cls)
        missing = [_key(f) for f in fields if _key(f) not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SapIndexError(f"not a {cls.__name__}: it lacks {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _from_json(hints[f.name], data[_key(f)]) for f in fields if _key(f) in data})


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get(_JSON_KEY, f.name)


def _from_json(hint, value):
    """``value`` (as :mod:`json` read it) in the shape the type ``hint`` names: tuples for lists,
    records for objects typed as records; anything else as it is."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):  # X | None: None is handled above
        return _from_json(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        return tuple(_from_json(h, v) for h, v in zip(items, value, strict=True))
    if origin is dict and args:
        return {k: _from_json(args[1], v) for k, v in value.items()}
    if origin is None and isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value)
    return value
