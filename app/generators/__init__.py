"""Generators behind one interface: ``stream`` yields text deltas, then one final usage event."""
