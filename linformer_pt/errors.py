"""The one exception type for bad user input.

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A bad value, file or option supplied by the user; the message names it and what is allowed."""
