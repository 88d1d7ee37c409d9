import csv

import pytest

from deepis_rt.errors import InputError
from deepis_rt.stream.results import FRAME_COLUMNS, ResultsFolder

CELLS = ["frame", "time_s", "cell_id"]
SYN = ["frame", "time_s", "synapse_id"]


def _frame_row(i, source):
    row = dict.fromkeys(FRAME_COLUMNS, "")
    row.update(frame=i, source=source, time_s=float(i), status="ok", latency_ms=1.5)
    return row


def test_commit_and_reopen(tmp_path):
    rf = ResultsFolder(tmp_path / "out", CELLS, SYN)
    assert rf.open() == []
    rf.commit_frame(_frame_row(0, "a.tif"), [{"frame": 0, "time_s": 0.0, "cell_id": 1}], [])
    rf.commit_frame(_frame_row(1, "b.tif"), [{"frame": 1, "time_s": 1.0, "cell_id": 1}],
                    [{"frame": 1, "time_s": 1.0, "synapse_id": 1}])
    rf2 = ResultsFolder(tmp_path / "out", CELLS, SYN)
    rows = rf2.open()
    assert [r["source"] for r in rows] == ["a.tif", "b.tif"]
    assert rf2.next_frame == 2 and rf2.done_sources == {"a.tif", "b.tif"}


def test_uncommitted_rows_and_torn_lines_are_repaired(tmp_path):
    out = tmp_path / "out"
    rf = ResultsFolder(out, CELLS, SYN)
    rf.open()
    rf.commit_frame(_frame_row(0, "a.tif"), [{"frame": 0, "time_s": 0.0, "cell_id": 1}], [])
    # a run killed mid-frame: cell rows of frame 1 written, no commit, and a torn line
    rf.cells.append([{"frame": 1, "time_s": 1.0, "cell_id": 1}])
    with open(out / "cells.csv", "ab") as f:
        f.write(b"1,1.0,")
    with open(out / "frames.csv", "ab") as f:
        f.write(b"1,b.tif,1.0,o")
    rf2 = ResultsFolder(out, CELLS, SYN)
    rows = rf2.open()
    assert [r["frame"] for r in rows] == ["0"]
    with open(out / "cells.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert [c["frame"] for c in cells] == ["0"]
    assert (out / "frames.csv").read_bytes().endswith(b"\n")
    rf2.commit_frame(_frame_row(1, "b.tif"), [{"frame": 1, "time_s": 1.0, "cell_id": 1}], [])
    with open(out / "cells.csv", newline="") as f:
        assert [c["frame"] for c in csv.DictReader(f)] == ["0", "1"]


def test_foreign_columns_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "frames.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="another --out"):
        ResultsFolder(out, CELLS, SYN).open()


def test_nan_written_as_empty_and_json_null(tmp_path):
    import json

    rf = ResultsFolder(tmp_path, CELLS, SYN)
    rf.open()
    rf.commit_frame(_frame_row(0, "a"), [{"frame": 0, "time_s": float("nan"), "cell_id": 1}])
    assert "0,,1" in (tmp_path / "cells.csv").read_text()
    rf.write_summary({"x": float("inf"), "y": [1.0, float("nan")]})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"x": None, "y": [1.0, None]}
