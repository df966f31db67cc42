"""training/progress.py: a live bar only on a terminal; elsewhere one line when the bar closes."""

from __future__ import annotations

import io

from kronos_rolling.training.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(bar, steps: int = 50) -> None:
    for step in range(steps):
        bar.update(4)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}", bars_s="1,000")
    bar.close()


def test_a_log_file_gets_one_line_per_epoch_with_the_final_figures():
    log = io.StringIO()
    for epoch in (1, 2):
        run_epoch(progress_bar(200, f"rolling crypto epoch {epoch}/2", "sample", stream=log))
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("rolling crypto epoch 1/2: 200/200 samples in ")
    assert lines[1].endswith(", loss=0.0200, bars_s=1,000")


def test_a_terminal_gets_the_live_tqdm_bar():
    screen = Terminal()
    bar = progress_bar(200, "rolling crypto epoch 1/2", "sample", stream=screen)
    assert not isinstance(bar, LineProgress)
    run_epoch(bar)
    assert "\r" in screen.getvalue() and "200/200" in screen.getvalue()


def test_disabled_shows_nothing_anywhere():
    for stream in (io.StringIO(), Terminal()):
        run_epoch(progress_bar(200, "quiet", "sample", enabled=False, stream=stream))
        assert stream.getvalue() == ""


def test_closing_twice_prints_once():
    log = io.StringIO()
    bar = progress_bar(3, "stage", "step", stream=log)
    bar.update(3)
    bar.close()
    bar.close()
    assert log.getvalue().count("\n") == 1
