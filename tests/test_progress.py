"""Progress lines of long steps: the share done, the time taken and the time left."""

from __future__ import annotations

from big5_dagster.lib.common.progress import ProgressLine, format_seconds


def test_progress_lines_estimate_the_time_left_from_the_units_done():
    now = {"t": 100.0}
    line = ProgressLine("answers", every=0.25, clock=lambda: now["t"])
    now["t"] = 130.0
    assert line.update(10, 40) == "answers: 10/40 (25%) in 30 s, about 1 min 30 s left"
    now["t"] = 131.0
    assert line.update(11, 40) is None  # not a quarter further yet
    now["t"] = 220.0
    assert line.update(40, 40) == "answers: 40/40 (100%) in 2 min 00 s"  # done: no estimate


def test_seconds_read_as_minutes_and_hours():
    assert [format_seconds(s) for s in (0.4, 59, 61, 3600 + 125)] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "1 h 02 min",
    ]
