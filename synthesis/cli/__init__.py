"""Command groups of the synthesis package; each module only parses and delegates."""
