"""The toolchain's one error for settings: the commands turn it into a one-line message and exit status 2."""


class ConfigError(ValueError):
    """Settings that do not fit together, or do not fit what they act on (a checkpoint, a cache, the manifest)."""
