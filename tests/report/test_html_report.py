"""``report.html``: written at the end of a stream, self-contained, and showing its plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from deepis_rt.cli import main
from deepis_rt.core.labels import LABEL_COLORS
from deepis_rt.errors import InputError
from deepis_rt.report import write_report
from deepis_rt.report.figures import FIT_COLOR


def _has_colour(image: np.ndarray, hex_or_rgb, tol: int = 12, min_pixels: int = 30) -> bool:
    rgb = np.array([int(hex_or_rgb[i:i + 2], 16) for i in (1, 3, 5)] if isinstance(hex_or_rgb, str) else hex_or_rgb[:3])
    pixels = (image[..., :3] * 255 if image.dtype != np.uint8 else image[..., :3]).astype(int)
    return int((np.abs(pixels - rgb).max(axis=-1) <= tol).sum()) >= min_pixels


def test_stream_writes_a_self_contained_report(results_folder):
    page = (results_folder / "report.html").read_text()
    for heading in ("Synapses", "Synthetic truth next to the fit", "The contact over time", "Tracks", "Frames"):
        assert f"<h2>{heading}</h2>" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # kinetics, contact, tracks, frame status
    assert not re.search(r'src="(?!data:)', page)  # nothing outside the file
    assert {p.name for p in (results_folder / "report").glob("*.png")} == {
        "synapse_1.png", "contact.png", "mip_tracks.png", "frame_status.png"}
    # the truth and the fit in one table, the command and versions of the run
    summary = json.loads((results_folder / "summary.json").read_text())
    assert summary["truth"]["A_max_um2"]["true"] == 30.0
    assert "<td>30.0</td>" in page and "deepis-rt " in page and "torch " in page


def test_kinetics_plot_shows_fit_band_and_truth(results_folder):
    image = imread(results_folder / "report" / "synapse_1.png")
    assert _has_colour(image, FIT_COLOR)  # the fitted curve
    assert _has_colour(image, (0, 0, 0), tol=30, min_pixels=200)  # the dashed truth (and text)
    # the band: the fit colour at 18 % over white
    band = tuple(round(255 - 0.18 * (255 - int(FIT_COLOR[i:i + 2], 16))) for i in (1, 3, 5))
    assert _has_colour(image, band, tol=6, min_pixels=200)


def test_contact_slices_show_every_label(results_folder):
    image = imread(results_folder / "report" / "contact.png")
    # labels at 45 % over the grey RI: look for the hue, not the exact value
    rgb = image[..., :3]
    green = (rgb[..., 1] > rgb[..., 0] + 0.15) & (rgb[..., 1] > rgb[..., 2] + 0.15)
    magenta = (rgb[..., 0] > rgb[..., 1] + 0.15) & (rgb[..., 2] > rgb[..., 1] + 0.15)
    yellow = (rgb[..., 0] > rgb[..., 2] + 0.2) & (rgb[..., 1] > rgb[..., 2] + 0.2)
    assert green.sum() > 500 and magenta.sum() > 500 and yellow.sum() > 100


def test_report_command_on_a_folder_and_refusal_elsewhere(results_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results_folder, copy, ignore=shutil.ignore_patterns("report*", "timelapse.ome.zarr"))
    res = CliRunner().invoke(main, ["report", str(copy), "--time-points", "2"])
    assert res.exit_code == 0, res.output
    page = (copy / "report.html").read_text()
    assert "2 of 6 time points" in page  # the contact from masks/ (no store), two of six time points
    with pytest.raises(InputError, match="no frames.csv here"):
        write_report(tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(results_folder, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,4200",
           "--hide-scrollbars", (results_folder / "report.html").as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = imread(shot)
    assert image.shape[:2] == (4200, 1200)
    # the embedded PNGs were decoded and laid out: the fit curve, the frame-status colours and the labels
    assert _has_colour(image, FIT_COLOR, min_pixels=100)
    assert _has_colour(image, "#2ca02c", min_pixels=100)
    assert _has_colour(image, LABEL_COLORS[1], tol=60, min_pixels=100)
    # and it is a page, not a blank window: most of it is white, a good part is not
    assert 0.05 < float((image[..., :3] < 0.9).any(axis=-1).mean()) < 0.9


def test_a_run_with_nothing_new_keeps_the_report(results_folder):
    from stream_support import make_segmenter

    from deepis_rt.stream import Stream

    page = results_folder / "report.html"
    before = page.stat().st_mtime_ns
    summary = json.loads((results_folder / "summary.json").read_text())
    with Stream(summary["source_path"], results_folder, make_segmenter(), once=True, settle_s=0.0,
                frame_interval_s=3.0, report=True) as stream:
        assert stream.run()["run"]["frames_ok"] == 0
    assert page.stat().st_mtime_ns == before
