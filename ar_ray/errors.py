"""Exceptions shared across wings (so that no wing imports another only for its error type)."""


class ConfigError(ValueError):
    """Flags that cannot work together; the message says which and what to do."""
