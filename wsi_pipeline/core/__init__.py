"""Foundations shared by every stage: errors, files (hashes, atomic writes), locks, polygons, progress."""
