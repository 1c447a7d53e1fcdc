"""Shared small modules every stage stands on: file I/O, output paths, grids, logs, provenance, scan checks."""
