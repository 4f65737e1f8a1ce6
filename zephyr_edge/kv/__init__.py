"""KV backends (entry-point group ``zephyr_edge.kv``): the interface and the built-in ones."""
