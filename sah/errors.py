"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class SahError(Exception):
    """A problem with the user's input, config or environment, stated in one line."""


class ConfigError(SahError):
    """A bad config key or value."""


class MediaError(SahError):
    """A missing, empty, corrupt or unsupported media file."""


class PluginError(SahError):
    """An unknown plugin, or one that failed to import, load or run."""
