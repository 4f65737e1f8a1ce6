"""The ``zephyr-edge`` command line: argument parsing, one module per command group, dev mode, the process runner."""
