"""Patch data sets on disk: PCam HDF5, Kaggle's layout, folders per class."""
