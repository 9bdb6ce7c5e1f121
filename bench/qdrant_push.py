"""Pushing an index into Qdrant (issue 32): pages/s to local mode, and bytes per page on the wire and stored,
full vectors against SAP 0.1.

The same rendered pages (the micro model's vocabulary) are indexed twice with the built-in micro bundle,
at keep ratio 1.0 (every visual token: the full index) and 0.1 (SAP), then each index is pushed into a
fresh local-mode collection, alternating over rounds. Wire bytes are a page's upsert as Qdrant's REST
JSON and as its gRPC message (qdrant-client's own conversion); stored bytes are computed from Qdrant's
storage of a float16 multivector (2 bytes a value) and its int8 scalar / binary quantization (1 byte,
1 bit a value, held beside the originals). Local mode keeps points pickled in SQLite and scans in
Python: its search time is not a server's, so it is not reported.

Usage: python bench/qdrant_push.py [--pages 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from harness import machine, run, sapindex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from qdrant_client import models
    from qdrant_client.conversions.conversion import RestToGrpc

    from sapindex.benchdata.examples import write_examples
    from sapindex.engines import qdrant as engine
    from sapindex.index.store import Index

    with tempfile.TemporaryDirectory(prefix="qdrant-push-") as tmp:
        root, ratios = Path(tmp), {"full (keep 1.0)": 1.0, "SAP 0.1": 0.1}
        write_examples(root / "pages", n_pages=args.pages)
        for ratio in ratios.values():
            run(sapindex("index", root / "pages", "--out", root / str(ratio), "--keep-ratio", ratio))
        rates: dict[str, list[float]] = {name: [] for name in ratios}
        for r in range(args.rounds):
            for name, ratio in ratios.items():
                with Index.open(root / str(ratio)) as index:
                    report = engine.push(client := engine.connect(str(root / f"q{r}-{ratio}")), "local", "pages", index)
                client.close()
                rates[name].append(report.pushed / report.seconds)
        print(f"# Qdrant push: {machine()}; "
              f"{args.pages} rendered pages, micro model (128-d), qdrant-client local mode, {args.rounds} rounds\n")
        print("| vectors | vectors/page | push pages/s (rounds) | REST JSON KB/page | gRPC KB/page | "
              "stored float16 KB/page | + int8 scalar KB | + binary KB |\n|---|---|---|---|---|---|---|---|")
        for name, ratio in ratios.items():
            with Index.open(root / str(ratio)) as index:
                points = [models.PointStruct(id=engine.point_id(r["content_hash"], r["page"]),
                                             payload=engine.payload(r), vector={"v": r["vectors"].tolist()})
                          for r in index.iter_rows()]
            per_page, dim = np.mean([len(p.vector["v"]) for p in points]), len(points[0].vector["v"][0])
            rest = np.mean([len(json.dumps(p.model_dump(exclude_none=True))) for p in points]) / 1e3
            grpc = np.mean([RestToGrpc.convert_point_struct(p).ByteSize() for p in points]) / 1e3
            print(f"| {name} | {per_page:.0f} | {', '.join(f'{x:.0f}' for x in rates[name])} | {rest:.1f} | "
                  f"{grpc:.1f} | {per_page * dim * 2 / 1e3:.1f} | {per_page * dim / 1e3:.1f} | "
                  f"{per_page * dim / 8 / 1e3:.2f} |")

if __name__ == "__main__":
    main()
