"""Training loops behind ``sims train``."""
