"""SIMS synthesis: canvases from retrieved segments, and the networks that turn them into photos.

- ``synthesis.canvas``: alignment, ordering, compositing with elided boundaries, provenance, and
  the simulated canvases the synthesis network trains on.
- ``synthesis.networks``: one network family per file (refinement, transform, ordering, ...).
- ``synthesis.model_directory``: the one on-disk format of every network (save, load, float16 export).
- ``synthesis.training``: the trainers behind ``sims train ...`` and the harness that runs them all.
- ``synthesis.evaluation``: segmentation consistency, power spectra and the eval report.
"""
