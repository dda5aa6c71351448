"""Benchmarks: each writes bench/results/<name>.json; ``python -m bench report`` renders the README table."""
