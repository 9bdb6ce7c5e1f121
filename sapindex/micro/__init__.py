"""The micro retriever, the built-in default model: its training recipe and data (torch)."""
