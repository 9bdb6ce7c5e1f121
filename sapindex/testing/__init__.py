"""Fixtures shipped with the package: tiny random checkpoints of every family (torch) and toy pages (PIL only).

Shipped, not test-only, because ``sapindex demo --pipeline`` and the benchmarks build on them."""
