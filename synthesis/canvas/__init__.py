"""Canvas building (paper §4.3, §4.4, §5.2)."""
