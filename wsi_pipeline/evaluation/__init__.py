"""Evaluation: patch metrics, annotations as ground truth, Camelyon16 FROC, heatmaps against truth."""
