"""``python -m zephyr_edge``: the ``zephyr-edge`` console script."""

from zephyr_edge.cli.main import main

main()
