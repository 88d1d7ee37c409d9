"""cells.csv / synapses.csv rows and the per-synapse PNG."""

import csv
import io
import math

import numpy as np
import pytest

from deepis_rt.analysis import (
    CELL_COLUMNS,
    SYNAPSE_COLUMNS,
    Cell,
    FrameAnalysis,
    Synapse,
    SynapseTracker,
    cell_rows,
    plot_synapse,
    plot_synapses,
    saturation,
    synapse_rows,
)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plots save, in order (to inspect what was drawn)."""
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _frame(f):
    cells = [
        Cell(1, "tcell", 250.0 + f, 190.0, 1.36, 30.0, 8.0, 10.0 + 0.05 * f, 10.0),
        Cell(2, "target", 900.0 - f, 450.0, math.nan, math.nan, 8.0, 20.0, 10.0),
    ]
    area = float(saturation(np.array(3.0 * f), 106.0, 40.0)) + 1.0
    syn = [Synapse(1, 1, 2, area, 1.365, 0.02 * area, 20.0)]
    return FrameAnalysis(
        np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.int32), cells, syn, (0.5, 0.25, 0.25)
    )


def test_column_names_follow_design():
    assert CELL_COLUMNS == (
        "frame", "time_s", "cell_id", "track_id", "kind", "volume_um3", "surface_um2",
        "mean_ri", "dry_mass_pg", "z_um", "y_um", "x_um",
    )  # fmt: skip
    assert SYNAPSE_COLUMNS == (
        "frame", "time_s", "synapse_id", "tcell_track", "target_track",
        "is_area_um2", "is_mean_ri", "is_dry_mass_pg", "is_density_fg_um2", "is_area_err_um2", "quality",
    )  # fmt: skip


def test_rows_before_and_after_tracking():
    fa = _frame(0)
    rows = cell_rows(7, 21.0, fa)
    assert [list(r) for r in rows] == [list(CELL_COLUMNS)] * 2
    assert rows[0]["track_id"] == "" and rows[1]["mean_ri"] == ""
    tracked = SynapseTracker().update(fa, 21.0)
    rows = cell_rows(7, 21.0, tracked)
    assert rows[0]["frame"] == 7 and rows[0]["time_s"] == 21.0 and rows[0]["kind"] == "tcell"
    assert rows[0]["track_id"] == fa.cells[0].track_id
    srows = synapse_rows(7, 21.0, tracked)
    assert list(srows[0]) == list(SYNAPSE_COLUMNS)
    assert (srows[0]["tcell_track"], srows[0]["target_track"]) == (fa.cells[0].track_id, fa.cells[1].track_id)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CELL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    assert buf.getvalue().splitlines()[0] == ",".join(CELL_COLUMNS)


def test_plots_are_written(tmp_path):
    tr = SynapseTracker()
    for f in range(25):
        tr.update(_frame(f), time_s=3.0 * f)
    paths = plot_synapses(tr, tmp_path / "plots", dpi=72)
    assert len(paths) == 1 and paths[0].name.endswith(".png")
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[0].stat().st_size > 5_000
    # a synapse seen twice: no fit possible, still a plot
    tr2 = SynapseTracker()
    for f in range(2):
        tr2.update(_frame(f), time_s=float(f))
    (history,) = tr2.histories.values()
    out = plot_synapse(history, tmp_path / "short.png")
    assert out.exists()


def test_area_plot_shows_the_uncertainty_it_is_fitted_with(tmp_path, figures):
    from matplotlib.container import ErrorbarContainer

    tr = SynapseTracker()
    for f in range(25):
        tr.update(_frame(f), time_s=3.0 * f)
    (history,) = tr.histories.values()
    history.is_area_err_um2[:] = [0.5 + 0.01 * i for i in range(len(history.is_area_err_um2))]
    plot_synapse(history, tmp_path / "with_err.png", dpi=72)
    (bars,) = [c for c in figures[-1].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars.lines[2][0].get_segments()) == len(history.is_area_um2)  # one bar per frame
    history.is_area_err_um2[:] = [math.nan] * len(history.is_area_err_um2)  # unknown: plain points
    plot_synapse(history, tmp_path / "without_err.png", dpi=72)
    assert not [c for c in figures[-1].axes[0].containers if isinstance(c, ErrorbarContainer)]


def test_plot_fits_like_the_summary_when_no_fit_is_given(tmp_path, figures):
    """plot_synapse(history, path) alone fitted with the onset fixed at the first frame in contact:
    its legend showed a shorter tau_half than summary.json for the same synapse."""
    from deepis_rt.analysis.plots import _fit_label

    rng = np.random.default_rng(0)
    tr = SynapseTracker()
    for k in range(60):  # 3 s frames; contact begins at 4 s, first seen at 6 s
        t = 3.0 * k
        area = float(saturation(np.array(t - 4.0), 106.0, 40.0)) if t > 4.0 else 0.0
        fa = _frame(0)
        syn = Synapse(1, 1, 2, area + rng.normal(0, 0.3), 1.36, 1.0, 50.0, is_area_err_um2=1.0)
        fa.synapses = [syn] if area else []
        tr.update(fa, time_s=t)
    (summary,) = tr.summary()
    (history,) = tr.histories.values()
    plot_synapse(history, tmp_path / "alone.png", dpi=72)
    legend = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert _fit_label(summary.area_fit, "µm²") in legend
