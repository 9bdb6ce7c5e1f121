"""Fetch PDF manuals from Debian ``*-doc`` packages and build the real-document benchmark from them.

Why Debian: its archive serves every package at a pinned version with checksums, through apt,
which reaches machines that reach nothing else; the manuals are typeset by several tool chains
(Texinfo, LaTeX, groff, plain TeX) that no training page of ours imitates. Versions are pinned so
that a rerun fetches the same PDFs and builds byte-identical files; if a pinned version leaves the
archive, ``apt-get download`` fails and the pin (and then the benchmark) must change.

Steps: ``apt-get download PKG=VERSION`` into WORK/debs (skipped when the .deb is there),
``dpkg-deb -x`` into WORK/root/PKG, copy the listed manuals to WORK/pdfs (``.pdf.gz`` unpacked),
write WORK/sources.json (PDF -> package, version, path in the package, .deb sha256), then
``sapindex.benchdata.pdfdocs.build_pdf_benchmark`` with query words restricted to the first
``--vocab-size`` words of ``sapindex.benchdata.render.vocabulary()`` (the words the micro model
was trained to read).

Usage: python bench/debian_docs.py [--work bench-data/debian] [--out bench-data/debian-docs-bench]
       [--vocab-size 1000] [--pages 500 --queries 500 --seed 1234]
Run ``apt-get update`` first if apt cannot find a package.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MANUALS = {  # package: (pinned version, manuals inside the .deb) -- about 40 MB of .debs
    "r-doc-pdf": ("4.2.2.20221110-2", ("usr/share/R/doc/manual/R-intro.pdf", "usr/share/R/doc/manual/R-lang.pdf",
                                       "usr/share/R/doc/manual/R-data.pdf")),
    "gnuplot-doc": ("5.4.4+dfsg1-2", ("usr/share/doc/gnuplot/gnuplot.pdf",)),
    "octave-doc": ("7.3.0-2", ("usr/share/doc/octave/octave.pdf", "usr/share/doc/octave/refcard-a4.pdf")),
    "bash-doc": ("5.2.15-2", ("usr/share/doc/bash/bash.pdf", "usr/share/doc/bash/bashref.pdf")),
    "asymptote-doc": ("2.85+ds-1", ("usr/share/doc/asymptote/asymptote.pdf", "usr/share/doc/asymptote/CAD.pdf")),
    "sbcl-doc": ("2:2.2.9-1", ("usr/share/doc/sbcl/sbcl.pdf.gz",)),
    "maxima-doc": ("5.46.0-11", ("usr/share/doc/maxima-doc/maximabook-19-Sept-2004.pdf.gz",)),
}


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def fetch(package: str, version: str, debs: Path) -> Path:
    """The package's .deb at the pinned version, downloaded unless already in ``debs``."""
    for deb in sorted(debs.glob(f"{package}_*.deb")):
        if _field(deb, "Package") == package and _field(deb, "Version") == version:
            return deb
    done = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"apt-get download {package}={version} failed (run apt-get update; the pinned version may have "
                 f"left the archive):\n{done.stderr.strip()}")
    return fetch(package, version, debs)


def collect(work: Path) -> dict[str, dict]:
    """Fetch and unpack every package, copy its manuals to ``work/pdfs``; {pdf name: its source}."""
    debs, pdfs = work / "debs", work / "pdfs"
    for folder in (debs, pdfs, work / "root"):
        folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for package, (version, members) in MANUALS.items():
        deb = fetch(package, version, debs)
        root = work / "root" / package
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        for member in members:
            data = (root / member).read_bytes()
            name = Path(member).name
            if name.endswith(".gz"):
                data, name = gzip.decompress(data), name[:-3]
            (pdfs / name).write_bytes(data)
            sources[name] = {"package": package, "version": version, "path": "/" + member,
                             "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
    (work / "sources.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-data" / "debian")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-data" / "debian-docs-bench")
    parser.add_argument("--vocab-size", type=int, default=1000, help="query words from the first N vocabulary words")
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    from sapindex.benchdata.pdfdocs import build_pdf_benchmark
    from sapindex.benchdata.render import vocabulary

    sources = collect(args.work)
    words = vocabulary()[: args.vocab_size]
    start = time.perf_counter()
    manifest = build_pdf_benchmark([args.work / "pdfs" / name for name in sorted(sources)], args.out, args.pages,
                                   args.queries, args.seed, vocabulary_words=words, sources=sources)
    c = manifest["counts"]
    print(f"{args.out}: {c['pages']} pages from {c['pdfs']} PDFs, {c['queries']} queries "
          f"({c['queries_requested']} requested), built in {time.perf_counter() - start:.1f} s")
    for pdf in manifest["pdfs"]:
        source = f"{pdf['source']['package']} {pdf['source']['version']}"
        print(f"  {pdf['file']:30} {source:30} "
              f"{pdf['pages']:5} pages, {pdf['corpus_pages']:3} in corpus, {pdf['queries']:3} queries")


if __name__ == "__main__":
    main()
