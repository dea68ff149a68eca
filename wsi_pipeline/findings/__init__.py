"""Answers from a heatmap: tumour regions, the slide summary, QuPath GeoJSON, the overlay, tile tables."""
