"""The console tee: what the terminal showed ends up in the run folder's log, progress-bar redraws collapsed."""
import sys

from linformer_pt.cli.console import tee_console


def test_tee_keeps_printed_lines_and_the_last_state_of_redrawn_ones(tmp_path, capsys):
    log = tmp_path / "run" / "train.log"
    with tee_console(log):
        print("config: k=64")
        for step in range(1, 4):  # a progress bar on stderr redraws one line
            sys.stderr.write(f"\rtrain: {step}/3")
            sys.stderr.flush()
            if step == 2:
                print("valid loss 7.1")  # printed on stdout while the bar's line is unfinished
        sys.stderr.write("\n")
        print("done: 3 updates")
        sys.stderr.write("\rlast bar 1/9")  # never finished: its last state is kept when the run ends
    assert log.read_text().splitlines() == [
        "config: k=64", "valid loss 7.1", "train: 3/3", "done: 3 updates", "last bar 1/9",
    ]
    seen = capsys.readouterr()  # the console still gets everything, redraws included
    assert "\rtrain: 1/3" in seen.err and "done: 3 updates" in seen.out


def test_tee_appends_restores_the_streams_and_can_be_off(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("an earlier start\n")
    before = sys.stdout, sys.stderr
    with tee_console(log):
        print("resumed")
    assert (sys.stdout, sys.stderr) == before
    with tee_console(log, enabled=False):  # another rank of a distributed run
        print("rank 1")
    assert log.read_text() == "an earlier start\nresumed\n"
