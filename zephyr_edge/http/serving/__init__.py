"""The serving half of the data path: ``Host`` → snapshot → asset → bytes, with its caches."""
