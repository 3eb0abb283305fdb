"""Algorithms: one module per family."""
