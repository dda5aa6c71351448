"""HTTP routes (FastAPI lives here and in app/main.py only)."""
