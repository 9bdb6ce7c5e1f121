"""The torch side of sapindex: calibration (SR analysis, window selection) and, later, ONNX export.

Importing this package does not import torch; its modules do, on first use.
"""
