"""The torch side's ONNX export: graphs per backbone, conversion (``export``) and parity check (``validate``).

Importing this package does not import torch; its modules do, on first use.
"""
