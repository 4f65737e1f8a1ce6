"""Settings: the typed configuration (fields, loader) and the redaction of its secrets."""
