"""The files layer: how testbed writes and reads its directories safely (atomic JSON, the directory
lock, names and paths that cannot escape their root, no writes through symbolic links)."""
