"""zephyr-edge-pgkv: zephyr_edge's KV data in PostgreSQL (an example third-party backend)."""

from zephyr_edge_pgkv.backend import PostgresKV, PostgresOptions

__version__ = "0.1.0"
__all__ = ["PostgresKV", "PostgresOptions", "__version__"]
