"""napari plugin (npe2, manifest ``napari.yaml``): a reader for slides and ``wsi-score`` heatmaps laid over
them in micrometres, and a dock widget that scores the open slide in a worker thread.

Install with ``pip install "wsi-pipeline[napari]"``; napari finds it through the ``napari.manifest`` entry
point.
"""
