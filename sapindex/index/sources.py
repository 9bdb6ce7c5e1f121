"""Command-line inputs -> file paths (torch-free): the first stage of what ``index`` reads.

:func:`iter_sources` turns arguments into supported file paths: a file, a directory (walked
recursively, sorted, hidden entries skipped), ``-`` (a list of paths on stdin) or ``@list.txt``
(a list of paths in a file). Missing paths, unreadable directories and unsupported explicit files
come out as :class:`~sapindex.index.records.Failure` objects, never as exceptions, so one bad
input never stops a run; :func:`check_some_input_exists` refuses a run none of whose inputs
exists, before anything is written. Turning the paths into page images is
:mod:`sapindex.index.documents`' job.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from sapindex.errors import SapIndexError
from sapindex.index.records import Failure

__all__ = ["PDF_SUFFIXES", "IMAGE_SUFFIXES", "SUPPORTED_SUFFIXES", "Source", "check_some_input_exists", "is_supported",
           "iter_sources", "os_reason"]

PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})
SUPPORTED_SUFFIXES = PDF_SUFFIXES | IMAGE_SUFFIXES

Source = str | Failure


def is_supported(path: str | os.PathLike) -> bool:
    """True when the file name ends in a supported suffix (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in SUPPORTED_SUFFIXES


def os_reason(err: OSError) -> str:
    """An OS error as the short reason a failure gives."""
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, FileNotFoundError):
        return "no such file or directory"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    if isinstance(err, NotADirectoryError):
        return "not a directory"
    return err.strerror or str(err) or type(err).__name__


def _classify(path: str) -> tuple[str, str | None]:
    """('file'|'dir'|'fail', reason) for one path, following symlinks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "fail", "broken symbolic link"
        return "fail", "no such file or directory"
    except OSError as err:
        return "fail", os_reason(err)
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    if stat.S_ISREG(st.st_mode):
        return "file", None
    return "fail", "not a regular file (device, socket or pipe)"


def _walk(top: str) -> Iterator[Source]:
    """Supported regular files below ``top``, sorted by name at every level.

    Hidden entries (a name starting with '.') are skipped and symlinked directories are not
    followed (no loops); a symlink to a file is followed.
    """
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append, followlinks=False):
        while errors:
            err = errors.pop(0)
            yield Failure(err.filename or dirpath, f"cannot list directory: {os_reason(err)}")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not is_supported(name):
                continue
            path = os.path.join(dirpath, name)
            kind, reason = _classify(path)
            if kind == "file":
                yield path
            elif kind == "fail" and reason != "not a regular file (device, socket or pipe)":
                assert reason is not None  # a failure always has a reason
                yield Failure(path, reason)
    while errors:  # an unreadable top directory reports here
        err = errors.pop(0)
        yield Failure(err.filename or top, f"cannot list directory: {os_reason(err)}")


def _expand(path: str) -> Iterator[Source]:
    kind, reason = _classify(path)
    if kind == "fail":
        assert reason is not None  # a failure always has a reason
        yield Failure(path, reason)
    elif kind == "dir":
        yield from _walk(path)
    elif not is_supported(path):
        suffix = os.path.splitext(path)[1] or "(none)"
        yield Failure(path, f"unsupported file type {suffix!r} (supported: "
                            f"{', '.join(sorted(SUPPORTED_SUFFIXES))})")
    else:
        yield path


def _list_entries(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        entry = line.rstrip("\r\n").strip()
        if entry and not entry.startswith("#"):
            yield entry


def check_some_input_exists(args: Iterable[str | os.PathLike]) -> None:
    """Refuse a run none of whose inputs exists (every argument a missing path or path list), before
    anything is written: a typo must not leave an empty index behind. One missing input among others
    is a failure of the run instead (:func:`iter_sources`), like an unreadable file."""
    names: list[str] = [os.fspath(a) for a in args]
    if not names or "-" in names:
        return
    paths = [a[1:] if a.startswith("@") and len(a) > 1 else a for a in names]
    if any(os.path.exists(p) for p in paths):
        return
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    raise SapIndexError(f"{shown}: no such file or directory; nothing to index, nothing was written")


def iter_sources(args: Iterable[str | os.PathLike], stdin: TextIO | None = None) -> Iterator[Source]:
    """Expand command-line arguments into supported file paths (str) and :class:`Failure` s.

    Each argument is:

    - a file: yielded as given (an unsupported suffix is a failure);
    - a directory: walked recursively, sorted by name, keeping only supported suffixes
      (case-insensitive), skipping hidden entries; yielded as ``os.path.join(arg, ...)``;
    - ``-``: one path per line read from ``stdin`` (default ``sys.stdin``);
    - ``@list.txt``: one path per line read from that file; relative entries are relative to the
      list file's directory.

    In both lists, blank lines and lines starting with '#' are ignored, and every entry may itself
    be a file or a directory. Missing or unreadable paths become failures, never exceptions.
    """
    for arg in args:
        arg = os.fspath(arg)
        if arg == "-":
            stream = sys.stdin if stdin is None else stdin
            for entry in _list_entries(stream):
                yield from _expand(entry)
        elif arg.startswith("@") and len(arg) > 1:
            list_path = arg[1:]
            base = os.path.dirname(list_path)
            try:
                with open(list_path, encoding="utf-8") as fh:
                    entries = list(_list_entries(fh))
            except OSError as err:
                yield Failure(list_path, f"cannot read path list: {os_reason(err)}")
                continue
            except UnicodeDecodeError:
                yield Failure(list_path, "cannot read path list: not UTF-8 text")
                continue
            for entry in entries:
                yield from _expand(entry if os.path.isabs(entry) else os.path.join(base, entry))
        else:
            yield from _expand(arg)
