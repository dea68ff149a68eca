"""Command-line programs, one module each: ``wsi-score``, ``wsi-eval``, ``wsi-train``, ``wsi-synth``."""
