"""Per-family adapters over colpali-engine models (torch side).

``registry`` identifies a checkpoint from its files alone (no torch); ``base`` and the family
modules load it offline with eager attention and expose one batched forward pass that yields
final embeddings and per-layer visual in-degree centrality.
"""
