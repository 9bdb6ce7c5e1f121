"""Every public name of the Python API (``sapindex.__all__``) and every public method of its classes
carries a Google-style docstring: an ``Args:`` entry per parameter, ``Returns:`` or ``Yields:`` where
something is returned.

Why a test: mkdocstrings renders these sections as the API reference (docs/reference/api.md), and a
parameter added without its entry, or an entry deleted, would render undocumented without a warning.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable

import pytest

import sapindex

# Google-style section headers, as griffe (mkdocstrings' parser) reads them: a known name alone on a
# line at the docstring's left margin
ARGS = ("Args", "Arguments", "Params", "Parameters")
ATTRIBUTES = ("Attributes",)
RETURNS = ("Returns", "Yields")
SECTIONS = (*ARGS, *ATTRIBUTES, *RETURNS, "Raises", "Examples", "Example", "Note", "Notes", "Warning", "Warnings",
            "See Also", "Other Parameters", "Keyword Args", "Keyword Arguments", "Todo")
HEADER = re.compile(rf"^({'|'.join(SECTIONS)}):\s*$")
ITEM_NAME = re.compile(r"^(\*{0,2}\w+)\s*(?:\(.*\))?\s*:")  # "name:", "name (type):", "*args:", "**kwargs:"


def sections(doc: str) -> dict[str, list[str]]:
    """Section name -> the names of its items (the lines at the section's own indentation)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent: int | None = None
    for line in inspect.cleandoc(doc).splitlines():
        header = HEADER.match(line)
        if header:
            current, indent = out.setdefault(header.group(1), []), None
            continue
        if current is None or not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # unindented prose ends the section
            current = None
            continue
        if indent is None:
            indent = depth
        if depth == indent:
            name = ITEM_NAME.match(line.strip())
            current.append(name.group(1) if name else line.strip())
    return out


def _documented(found: dict[str, list[str]], kinds: tuple[str, ...]) -> set[str]:
    return {name.lstrip("*") for kind in kinds for name in found.get(kind, [])}


def missing_parts(label: str, obj: Callable, *, method: bool, is_class: bool = False) -> list[str]:
    """What ``obj``'s docstring lacks, each said with ``label``: the docstring, an Args entry per
    parameter (``*args`` / ``**kwargs`` by that name or their bare one), Returns or Yields."""
    doc = obj.__doc__  # the object's own: inspect.getdoc would inherit a parent's
    if not doc or not doc.strip():
        return [f"{label}: no docstring"]
    found = sections(doc)
    problems = []
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a built-in constructor (an exception class): no parameters to name
        sig = None
    if sig is not None:
        params = list(sig.parameters.values())
        if method and params and params[0].name in ("self", "cls"):
            params = params[1:]
        names = [p.name for p in params]
        # a class documents its constructor's parameters under Args, or a record's fields under Attributes
        kinds = (*ARGS, *ATTRIBUTES) if is_class else ARGS
        section = "Args: or Attributes:" if is_class else "Args:"
        if names and not any(k in found for k in kinds):
            problems.append(f"{label}: no {section} section (parameters {', '.join(names)})")
        else:
            absent = [n for n in names if n not in _documented(found, kinds)]
            if absent:
                problems.append(f"{label}: {section} lacks {', '.join(absent)}")
        if not is_class and sig.return_annotation not in (None, "None") and not any(k in found for k in RETURNS):
            problems.append(f"{label}: no Returns: or Yields: section (returns {sig.return_annotation})")
    return problems


def _public_api() -> list[tuple[str, Callable, dict]]:
    """(label, object, how to check it) for each public name and each public method of its classes."""
    items: list[tuple[str, Callable, dict]] = []
    for name in sapindex.__all__:
        if name == "__version__":
            continue
        obj = getattr(sapindex, name)
        if not inspect.isclass(obj):
            items.append((name, obj, {"method": False}))
            continue
        items.append((name, obj, {"method": False, "is_class": True}))
        for attr, value in vars(obj).items():  # the class's own: inherited members are their class's to document
            if attr.startswith("_"):
                continue
            label = f"{name}.{attr}"
            if isinstance(value, (property, functools.cached_property)):
                items.append((label, value, {"property": True}))
            elif isinstance(value, staticmethod):
                items.append((label, value.__func__, {"method": False}))
            elif isinstance(value, classmethod):
                items.append((label, value.__func__, {"method": True}))
            elif inspect.isfunction(value):
                items.append((label, value, {"method": True}))
            # anything else (a dataclass default, a named tuple's field, a constant) is data, not API
    return items


API = _public_api()


@pytest.mark.parametrize(("label", "obj", "how"), API, ids=[label for label, _, _ in API])
def test_public_docstring(label, obj, how):
    if how.get("property"):
        doc = (obj.fget if isinstance(obj, property) else obj.func).__doc__
        assert doc and doc.strip(), f"{label}: property has no docstring"
        return
    problems = missing_parts(label, obj, method=how["method"], is_class=how.get("is_class", False))
    assert not problems, "; ".join(problems)


def test_the_collector_sees_the_api():
    labels = {label for label, _, _ in API}
    assert {name for name in sapindex.__all__ if name != "__version__"} <= labels
    assert {"Searcher.open", "Searcher.search", "Searcher.search_many", "Searcher.search_vectors", "Searcher.stats",
            "Searcher.refresh", "Searcher.version", "Index.open", "Index.stats", "Index.scan_pages",
            "IndexWriter.create_or_open", "Bundle.open", "Encoder.encode_queries", "IndexOptions.for_run"} <= labels
    assert not any(label.rsplit(".", 1)[-1].startswith("_") for label in labels)
    assert "IndexWriter.get" not in labels  # inherited from Index: documented there


def _example(path: str, *, limit: int = 3, **extra) -> list[int]:
    """Doc example.

    Args:
        path: A file.
        limit: How many.
        **extra: More.

    Returns:
        Numbers.
    """
    return []


def test_the_check_catches_a_removed_entry():
    assert missing_parts("_example", _example, method=False) == []
    doc = _example.__doc__
    assert doc is not None
    for removed, name in (("        limit: How many.\n", "limit"), ("        **extra: More.\n", "extra")):
        _example.__doc__ = doc.replace(removed, "")
        try:
            assert missing_parts("_example", _example, method=False) == [f"_example: Args: lacks {name}"]
        finally:
            _example.__doc__ = doc
    _example.__doc__ = doc.replace("    Returns:\n        Numbers.\n", "")
    try:
        assert missing_parts("_example", _example, method=False) == [
            "_example: no Returns: or Yields: section (returns list[int])"]
    finally:
        _example.__doc__ = doc
    _example.__doc__ = "Doc example, no sections."
    try:
        assert missing_parts("_example", _example, method=False) == [
            "_example: no Args: section (parameters path, limit, extra)",
            "_example: no Returns: or Yields: section (returns list[int])"]
    finally:
        _example.__doc__ = doc
