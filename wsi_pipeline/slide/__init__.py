"""Reading slides: openslide or tiffslide behind one ``Slide``, resampling to a target µm/px, finding slide
files."""
