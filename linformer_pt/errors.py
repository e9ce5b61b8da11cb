"""The one exception type for bad user input.

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A bad value, file or option supplied by the user; the message names it and what is allowed."""


class RunInterrupted(Exception):
    """A run stopped early (Ctrl-C, SIGTERM, SIGUSR1) after writing checkpoint_last.pt; rerunning resumes it.

    The CLI prints the message as one line and exits with `exit_code`, so schedulers can tell it from a failure.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
