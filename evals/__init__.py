"""Eval datasets, metrics and the gate that compares a candidate with a baseline."""
