"""The catalog: the records the worker keeps in the KV (snapshots, hostnames, hash lists), over the KV SPI."""
