"""The one error type that the CLI turns into a one-line message and exit code 2."""


class AutokdError(Exception):
    """Bad input or an unmet precondition: the message names the problem and the fix."""
