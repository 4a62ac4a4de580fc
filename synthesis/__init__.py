"""SIMS synthesis: canvases, networks, training and the synthesis worker."""
