"""SIMS synthesis: canvases from retrieved segments, and the networks that turn them into photos.

- ``synthesis.canvas``: alignment, ordering, compositing with elided boundaries, provenance, and
  the simulated canvases the synthesis network trains on.
- ``synthesis.networks``: one network family per file (refinement, transform, ordering).
- ``synthesis.training``: the training loops behind ``sims train ...``.
- ``synthesis.evaluation``: segmentation consistency, power spectra and the eval report.
"""
