"""The HTTP side of the worker: the aiohttp application, auth, request bodies, probes, connection bounds."""
