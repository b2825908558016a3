"""Trace replay: offline scheduling experiments over cluster traces."""
