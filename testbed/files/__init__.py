"""The files layer: the layout of testbed's directories (``layout``: every file name it writes or
reads) and how it writes and reads them safely (atomic JSON, the directory lock, names and paths
that cannot escape their root, no writes through symbolic links)."""
