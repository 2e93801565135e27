"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class SahError(Exception):
    """A problem with the user's input, config or environment, stated in one line.

    The message is written for a Python user (`overwrite=True`, `output.overwrite`); where the
    command line's wording differs (`--overwrite`), `cli` holds that one and `sah` prints it."""

    cli: str | None = None

    def __init__(self, *args: object, cli: str | None = None) -> None:
        super().__init__(*args)
        if cli is not None:
            self.cli = cli

    def cli_message(self) -> str:
        """The message as the command line says it."""
        return self.cli or str(self)


class ConfigError(SahError):
    """A bad config key or value."""


class MediaError(SahError):
    """A missing, empty, corrupt or unsupported media file."""


class PluginError(SahError):
    """An unknown plugin, or one that failed to import, load or run."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name: libraries' messages
    often run to many lines, and a user-facing error is one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def plugin_failure(kind: str, name: str, doing: str, exc: BaseException) -> PluginError:
    """`generator 'x' failed in decode: IndexError: ...` — an error raised inside a plugin, in one line
    that names the plugin (`doing` is e.g. "to load" or "in decode")."""
    text = " ".join(str(exc).split())
    return PluginError(f"{kind} {name!r} failed {doing}: {type(exc).__name__}" + (f": {text}" if text else ""))
