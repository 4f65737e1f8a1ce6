"""Storage backends (entry-point group ``zephyr_edge.storage``): the interface and the built-in ones."""
