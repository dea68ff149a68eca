"""The ``wsi-train`` recipe: augmentation and the training loop."""
