"""The one error type of the command line."""


class CLIError(Exception):
    """An error to show the user as one line, exit status 2."""
