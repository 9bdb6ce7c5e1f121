"""Per-backbone adapters over colpali-engine models, and the helpers that load them (torch side).

``sapindex.families`` identifies a checkpoint from its files alone (no torch); ``adapters``
picks the adapter class for it and loads it offline with eager attention (``loading`` merges
LoRA adapters and refuses missing weights, ``_compat`` keeps every load offline). ``base``
holds the shared adapter: one batched forward pass that yields final embeddings and per-layer
visual in-degree centrality; ``qwen2_vl``, ``paligemma``, ``idefics3`` and ``jina_v4`` say
what each family does differently.
"""
