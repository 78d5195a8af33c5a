"""Row backends of the memory front."""
