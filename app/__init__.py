"""The serving layer: HTTP API, RAG pipeline, PII filter, accounting. Imports ``ingest``, never ``evals``."""
