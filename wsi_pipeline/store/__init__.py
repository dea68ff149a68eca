"""The heatmap store: OME-NGFF Zarr written block by block, its metadata record, reading it back."""
