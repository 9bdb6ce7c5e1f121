"""The torch-free side of sapindex: everything that runs where only ``pip install sapindex`` is present.

Rule: nothing under ``sapindex.runtime`` imports torch or transformers, directly or through
another sapindex module (tests/test_torch_free.py checks it in a clean subprocess). It may use
numpy, PIL, tokenizers, onnxruntime and ``sapindex.sap``.
"""
