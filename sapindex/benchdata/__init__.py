"""Generated document pages with exact layout ground truth, and benchmarks built from them.

Why: a retriever trained from scratch needs an unlimited supply of document-like pages (real words,
a real font, tables, charts, several page shapes) whose every word has a known pixel box, plus a
held-out benchmark whose queries have exactly one relevant page. ``render`` draws the pages,
``synthetic`` turns them into queries, a BEIR-layout benchmark and an endless training stream.
Numpy, PIL, pyarrow and matplotlib's bundled fonts only: no torch, nothing downloaded.
"""
