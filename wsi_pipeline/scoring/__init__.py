"""Scoring slides on a Dask cluster.

- ``options``: options, events and results of a run;
- ``worker``: the block task and each worker process's (thread-safe) caches of open slides and models;
- ``cluster``: the Dask client a run scores on;
- ``planning``: a slide's plan (heatmap new, resumed, kept or refused; its lock), and the heatmap's metadata;
- ``scheduler``: the window of block tasks in flight across slides, landed into the heatmaps;
- ``settling``: what becomes of a slide when its blocks are done (finalised, reports, table row) or it failed;
- ``ledger``: the batch table ``OUT/slides.csv``;
- ``api``: ``score_slide`` and ``score_slides``."""
