"""Pages in, pruned vectors stored, hits out (torch-free): inputs, the indexing run, the LanceDB store, the kept-patches overlay."""
