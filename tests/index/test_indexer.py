"""The indexing run and search through the Python API, on the built-in micro model (no torch)."""

from sapindex.index.indexer import open_for_search, run_index, search
from sapindex.runtime.defaults import default_bundle_path, example_pages


def test_search_loads_only_the_text_graph(tmp_path):
    """A searcher encodes queries with the text graph alone: the vision graph (gigabytes at real
    size) is never loaded, and pages can still be encoded later, loading it on first use."""
    pages = example_pages()[:2]
    summary = run_index(default_bundle_path(), [str(p) for p in pages], tmp_path / "idx")
    assert summary.pages_indexed == 2
    index, encoder = open_for_search(tmp_path / "idx")
    with index:
        hits = search(index, encoder, ["annual report"], k=2)[0]
    assert len(hits) == 2
    assert encoder.sessions.loaded() == ["text"]
    from PIL import Image

    with Image.open(pages[0]) as image:
        encoder.encode_pages([image.convert("RGB")])
    assert encoder.sessions.loaded() == ["text", "vision"]
