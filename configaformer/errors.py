"""The one error type a bad config raises, so callers catch one thing and print one line."""


class ConfigError(ValueError):
    """A model or layer config that cannot be built; the message names where and why."""
