"""Retrieval evaluation (torch-free): datasets and calibration's pairs (one set of file readers),
compression methods, metrics, the runner, its encoding cache and its reports."""
