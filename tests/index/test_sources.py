"""sapindex.index.sources: command-line inputs to file paths, and every way an input can be missing."""

from __future__ import annotations

import io
import os

from helpers import only_failure

from sapindex.index.records import Failure
from sapindex.index.sources import iter_sources


def test_directory_walk_is_recursive_sorted_and_filtered(tmp_path):
    root = tmp_path / "docs"
    (root / "b_sub" / "deeper").mkdir(parents=True)
    (root / "a_sub").mkdir()
    (root / ".hidden").mkdir()
    for rel in ["z.PNG", "a.pdf", "m.Tiff", "notes.txt", "b_sub/c.jpeg", "b_sub/deeper/d.WEBP",
                "a_sub/e.jpg", ".hidden/h.png", ".dot.png", "b_sub/f.docx", "a_sub/g.tif"]:
        (root / rel).write_bytes(b"x")
    got = list(iter_sources([str(root)]))
    j = os.path.join
    assert got == [j(str(root), "a.pdf"), j(str(root), "m.Tiff"), j(str(root), "z.PNG"),
                   j(str(root), "a_sub", "e.jpg"), j(str(root), "a_sub", "g.tif"),
                   j(str(root), "b_sub", "c.jpeg"), j(str(root), "b_sub", "deeper", "d.WEBP")]


def test_explicit_paths_missing_and_unsupported_become_failures(tmp_path):
    good = tmp_path / "p.png"
    good.write_bytes(b"x")
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    broken = tmp_path / "broken.pdf"
    broken.symlink_to(tmp_path / "nowhere.pdf")
    got = list(iter_sources([str(good), str(tmp_path / "missing.pdf"), str(txt), str(broken)]))
    assert got[0] == str(good)
    assert got[1] == Failure(str(tmp_path / "missing.pdf"), "no such file or directory")
    assert isinstance(got[2], Failure) and "unsupported file type '.txt'" in got[2].reason
    assert got[3] == Failure(str(broken), "broken symbolic link")


def test_stdin_list_and_at_list(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ["a.png", "d/b.pdf", "d/c.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    stdin = io.StringIO(f"{tmp_path / 'a.png'}\n\n# a comment\n{tmp_path / 'd'}\r\n{tmp_path / 'nope.png'}\n")
    got = list(iter_sources(["-"], stdin=stdin))
    assert got == [str(tmp_path / "a.png"), str(tmp_path / "d" / "b.pdf"), str(tmp_path / "d" / "c.jpg"),
                   Failure(str(tmp_path / "nope.png"), "no such file or directory")]
    # @list: entries relative to the list file's directory
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\nd/c.jpg\n")
    assert list(iter_sources([f"@{listing}"])) == [str(tmp_path / "a.png"), str(tmp_path / "d" / "c.jpg")]
    missing = list(iter_sources([f"@{tmp_path / 'nolist.txt'}"]))
    assert only_failure(missing).reason == "cannot read path list: no such file or directory"


def test_unreadable_directory_is_a_failure_and_the_walk_goes_on(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    (root / "closed").mkdir(parents=True)
    (root / "open").mkdir()
    (root / "closed" / "x.pdf").write_bytes(b"x")
    (root / "open" / "y.pdf").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(root / "closed"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what chmod 000 does, also when running as root
    got = list(iter_sources([str(root)]))
    assert got == [Failure(str(root / "closed"), "cannot list directory: permission denied"),
                   str(root / "open" / "y.pdf")]
