"""Evaluation of synthesized images (paper §6)."""
