"""Which class is tumour: one rule for every stage (summary, overlay, napari, wsi-eval, FROC)."""

from __future__ import annotations

from collections.abc import Sequence

TUMOUR_NAMES = ("tumour", "tumor")


def tumour_class_index(class_names: Sequence[str]) -> int:
    """Index of the class named tumour/tumor (any case), else the last class.

    >>> tumour_class_index(["tumor", "normal"]), tumour_class_index(["normal", "metastasis"])
    (0, 1)
    """
    names = [name.lower() for name in class_names]
    return next((i for i, name in enumerate(names) if name in TUMOUR_NAMES), len(class_names) - 1)
