"""Exceptions shared across wings (so that no wing imports another only for its error type)."""


class ConfigError(ValueError):
    """Flags that cannot work together; the message says which and what to do."""


def read_config_toml(path, error: type[Exception] = ConfigError) -> dict:
    """A run config file (--config) as a dict; a missing or invalid file raises `error` saying which and why."""
    import tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise error(f"cannot read the config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path} is not valid TOML: {e}") from None
