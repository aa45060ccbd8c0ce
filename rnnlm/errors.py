"""The one exception type the command line turns into a one-line message and exit code 1."""


class UserError(Exception):
    """Bad input from the user: a missing file, a corrupt model, an invalid option value."""
