"""Retrieval evaluation (torch-free): datasets, compression methods, metrics, the runner and its reports."""
