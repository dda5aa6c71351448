"""Documents -> chunks -> embeddings -> pgvector: the index, its store and its SQL.

The lowest layer: imports neither ``app`` nor ``evals``.
"""
