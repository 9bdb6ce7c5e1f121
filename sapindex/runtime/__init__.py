"""Inference without torch: a bundle's graphs, preprocessing and SAP selection, on CPU or CUDA.

``bundle`` (the bundle format), ``session`` (the one ONNX Runtime session factory), ``encoder``
(pages and queries -> vectors, SAP pruning), ``layout`` (where a visual token sits on its page),
``preprocess/`` (numpy preprocessing per backbone) and ``defaults`` (the built-in model).

Rule: nothing here imports torch or transformers, directly or through another sapindex module
(tests/test_torch_free.py checks every module in a clean interpreter); the same holds for
``sapindex.index``, ``sapindex.eval`` and the other packages CONTRIBUTING.md lists.
"""
