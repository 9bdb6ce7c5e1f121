"""Reading and writing sapindex's own JSON artifacts: one atomic writer, one versioned reader.

Why one of each: the bundle manifest, the index metadata, the calibration record, the eval
report and the encoding cache's key are all small JSON files that a killed process must never
leave half-written, and that a reader must refuse with one clear line when they are not ours
or come from a newer sapindex. Each artifact names itself with ``format`` and a version key
(``format_version`` for the bundle and the index, ``version`` for the calibration and the
report, as they were first written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
