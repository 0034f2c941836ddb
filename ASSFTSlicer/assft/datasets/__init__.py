"""Data the engine can make itself: the MNI152-based sample data and tiny synthetic volumes."""
