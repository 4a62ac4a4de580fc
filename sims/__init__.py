"""The ``sims`` command line's root: it wires the packages' command groups together."""
