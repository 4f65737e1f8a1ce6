"""The ingest half of the data path: the hash list and ``POST /upload`` (files, snapshots, publishes)."""
