"""Console output copied into the run folder: stdout and stderr teed into a log file (train.log, ...).

A progress bar redraws its line with carriage returns; the log keeps each line's last state only.
"""
import contextlib
import sys
from pathlib import Path
from typing import IO, Any, Iterator


class LineLog:
    """Completed lines into `file`; a line redrawn with '\\r' keeps only what follows the last '\\r'."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.pending = ""  # the unfinished last line, as written so far

    def write(self, text: str) -> None:
        *done, self.pending = (self.pending + text).split("\n")
        for line in done:
            self.file.write(last_state(line) + "\n")
        if done:
            self.file.flush()  # a crash or kill still leaves every completed line on disk
        self.pending = self.pending[self.pending.rfind("\r", 0, len(self.pending) - 1) + 1 :]  # bounded memory

    def close(self) -> None:
        """Write the last state of an unfinished line (a progress bar that was never closed)."""
        state = last_state(self.pending)
        if state.strip():
            self.file.write(state + "\n")
        self.pending = ""
        self.file.flush()


def last_state(line: str) -> str:
    """What a terminal shows for `line`: the text after its last carriage return ('\\r\\n' ends a line)."""
    line = line.rstrip("\r")
    return line[line.rfind("\r") + 1 :]


class Tee:
    """A text stream that writes to the console stream and to a LineLog; everything else is the stream's."""

    def __init__(self, stream: Any, log: LineLog) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding... (tqdm asks for some of them)
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_console(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy stdout and stderr into `path` (appended: a resumed run continues its log) while the block runs.

    Only one process of a distributed run should pass enabled=True: the others would interleave their lines.
    """
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        logs = LineLog(file), LineLog(file)  # one per stream: a bar's partial line must not absorb printed lines
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(saved[0], logs[0]), Tee(saved[1], logs[1])
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            for log in logs:
                log.close()
