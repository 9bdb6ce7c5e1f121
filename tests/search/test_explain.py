"""Explaining a hit: the contributions add up to its exact score, the picture fills the patches the
query matched (and draws an Idefics3 global tile as its own panel), and a gone or changed file is a
clear error; ``search --explain`` writes one PNG per hit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from sapindex.errors import SapIndexError
from sapindex.index.indexer import run_index
from sapindex.runtime.defaults import default_bundle_path, example_pages
from sapindex.runtime.options import IndexOptions
from sapindex.search import Searcher, explain
from sapindex.search.overlay import match_overlay


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    (root / "pages").mkdir()
    for p in example_pages()[:3]:
        shutil.copy(p, root / "pages" / p.name)
    run_index(default_bundle_path(), [str(root / "pages")], root / "idx")
    return root


def test_contributions_add_up_to_the_hit_score(indexed):
    with Searcher.open(indexed / "idx") as searcher:
        for hit in searcher.search("annual report", k=3):
            ex = explain.explain(searcher, "annual report", hit.path, hit.page)
            assert ex.score == pytest.approx(hit.score, rel=1e-5)
            assert ex.weights().sum() == pytest.approx(hit.score, rel=1e-5)
            assert len(ex.matched) == len(searcher.encode(["annual report"])[0])
            d = ex.to_dict()
            assert {m["position"] for m in d["matches"]} <= set(ex.positions.tolist())
            assert sum(m["tokens"] for m in d["matches"]) == len(ex.matched)
        with pytest.raises(LookupError, match="is not in the index"):
            explain.explain(searcher, "annual report", "/nope.png", 1)


def test_the_picture_fills_the_matched_patches(indexed):
    with Searcher.open(indexed / "idx") as searcher:
        hit = searcher.search("annual report", k=1)[0]
        ex = explain.explain(searcher, "annual report", hit.path, hit.page)
    image = explain.picture(ex)
    with Image.open(hit.path) as page:
        scale = min(1.0, 1000 / max(page.size))
        assert image.size == (round(page.width * scale), round(page.height * scale) + 24)  # + the caption
    rows, cols = ex.grid
    best = ex.positions[np.argmax(ex.weights())]
    r, c = divmod(int(best), cols)
    w, h = image.width, image.height - 24
    x, y = int((c + 0.5) * w / cols), 24 + int((r + 0.5) * h / rows)
    red, green, blue = image.getpixel((x, y))
    assert blue > red + 40  # the best-matched patch is filled blue


def test_a_global_tile_is_drawn_as_its_own_panel():
    page = Image.new("RGB", (600, 400), (255, 255, 255))
    positions = [0, 5, 24, 30]  # two page-grid cells of 4x6, two global cells of 3x3 (24 + 0, 24 + 6)
    picture = match_overlay(page, (4, 6), positions, [1.0, 0.0, 0.5, 0.0], global_grid=(3, 3))
    assert picture.width == 600 + 12 + 500 and picture.height == 400
    panel = picture.crop((612, 0, picture.width, picture.height))
    r, g, b = panel.getpixel((500 // 6, 333 // 6))  # global cell (0, 0), half the best weight
    assert b > r
    with pytest.raises(ValueError, match="exceed grid"):
        match_overlay(page, (4, 6), [40], [1.0], global_grid=(3, 3))


def test_a_merged_vector_explains_the_cells_it_covers(tmp_path):
    """On a sap-merge index each match lists the cells its vector stands for (its cover), which the
    picture fills; the contributions still add up to the hit's score."""
    pages = [str(p) for p in example_pages()[:2]]
    run_index(default_bundle_path(), pages, tmp_path / "idx", IndexOptions(method="sap-merge"))
    with Searcher.open(tmp_path / "idx") as searcher:
        hit = searcher.search("annual report", k=1)[0]
        ex = explain.explain(searcher, "annual report", hit.path, hit.page)
        row = searcher.index.get(hit.path, hit.page)
    assert ex.score == pytest.approx(hit.score, rel=1e-5)
    for match in ex.to_dict()["matches"]:
        j = int(np.flatnonzero(ex.positions == match["position"])[0])
        assert match["cells"] == np.flatnonzero(row["cover"] == j).tolist() and match["position"] in match["cells"]
    image = explain.picture(ex)
    rows, cols = ex.grid
    best = int(np.argmax(ex.weights()))
    merged_in = [int(t) for t in np.flatnonzero(row["cover"] == best) if t != ex.positions[best] and t < rows * cols]
    assert merged_in, "the best vector merged no other cell; pick another page"
    r, c = divmod(merged_in[0], cols)
    w, h = image.width, image.height - 24
    red, green, blue = image.getpixel((int((c + 0.5) * w / cols), 24 + int((r + 0.5) * h / rows)))
    assert blue > red + 40  # a cell merged into the best vector is filled too


def test_gone_or_changed_files_and_the_cli(indexed, tmp_path):
    result = run_cli("search", indexed / "idx", "annual report", "-k", 2, "--explain", tmp_path / "why")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "why").iterdir()) == ["q1-1.png", "q1-2.png"]
    with Searcher.open(indexed / "idx") as searcher:
        hits = searcher.search("annual report", k=3)
        ex = explain.explain(searcher, "annual report", hits[0].path, hits[0].page)
        with Image.open(hits[0].path) as im:
            im.rotate(90).save(hits[0].path)  # the file changes after indexing
        with pytest.raises(SapIndexError, match="changed since it was indexed"):
            explain.picture(ex)
        type(tmp_path)(hits[1].path).unlink()
        with pytest.raises(SapIndexError, match="no such file or directory"):
            explain.picture(explain.explain(searcher, "annual report", hits[1].path, hits[1].page))
    partial = run_cli("search", indexed / "idx", "annual report", "-k", 3, "--explain", tmp_path / "why2")
    assert partial.returncode == 3 and partial.stderr.count("warning: no picture for q1") == 2
    assert len(partial.stdout.splitlines()) == 3  # the results themselves are all there
