"""zephyr_edge: a self-hostable edge worker for Zephyr micro-frontend deployments."""

__version__ = "0.1.0"
