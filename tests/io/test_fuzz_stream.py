"""A camera folder where good frames alternate with malformed, lying and hostile files.

``deepis-rt stream --once`` must process every good frame once, refuse every bad file with its own
reason (no file content in the tables or logs), stay within bounded memory, and a restart must process
nothing again. A symbolic link out of the folder is read only with ``--follow-symlinks``.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import tifffile
import torch
from click.testing import CliRunner
from fuzz_cases import SECRET
from tcf_helpers import write_classic_tcf

from deepis_rt.checkpoint import save_checkpoint
from deepis_rt.cli import main
from deepis_rt.model import build_model

VOXEL = (0.5, 0.25, 0.25)
SHAPE = (16, 32, 32)
GOOD = [0, 2, 8, 12]

# file name -> (what is wrong, a pattern its error must match); good frames are npy with a sidecar
BAD = {
    "frame_001.npy": ("sidecar voxel size in nm", r"nanometres: in micrometres that is \[0\.4, 0\.2, 0\.2\]"),
    "frame_003.npy": ("sidecar time NaN", r"time_s = nan is not a finite number of seconds"),
    "frame_004.tif": ("ImageJ slices=99 over 10 pages", r"ImageJ metadata declares images=99, slices=99"),
    "frame_006.tif": ("symbolic link to a file outside the folder", None),
    "frame_007.npy": ("sidecar voxel size in mm", r"millimetres"),
    "frame_009.npy": ("4 um voxels: 8x-16x the model's per axis", r"resamples to \(512, 4096, 4096\).*budget per frame"),
    "frame_010.tif": ("a text file named .tif", r"not a TIFF file"),
    "frame_011.npy": ("sidecar time a word", r"time_s = 'tomorrow' is not a number of seconds"),
    "frame_013.tcf": ("TCF times going backwards", r"out of order"),
    "frame_014.npy": ("npy header declares more than the file holds", r"the header declares shape"),
    "frame_015.npy": ("sidecar medium RI x 10 000", r"medium_ri = 13370 .*looks like RI x 10 000"),
}


def _ri(seed: int, shape=SHAPE) -> np.ndarray:
    """A cell-sized sphere in medium (smooth: an untrained network's output on noise takes long to analyse)."""
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = ((z - shape[0] / 2) * VOXEL[0]) ** 2 + ((y - shape[1] / 2) * VOXEL[1]) ** 2 + ((x - shape[2] / 2) * VOXEL[2]) ** 2
    return np.where(r2 < (2.5 + 0.1 * seed) ** 2, 1.36, 1.337).astype(np.float32)


def _npy(path, data, **side) -> None:
    np.save(path, data)
    path.with_suffix(".json").write_text(json.dumps({"voxel_size_um": list(VOXEL), **side}))


def _camera(tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    for i in GOOD:
        _npy(cam / f"frame_{i:03d}.npy", _ri(i), time_s=3.0 * i)
    _npy(cam / "frame_001.npy", _ri(1), voxel_size_um=[400, 200, 200])
    _npy(cam / "frame_003.npy", _ri(3), time_s=float("nan"))
    tifffile.imwrite(cam / "frame_004.tif", _ri(4, (10, 64, 64)), metadata=None, resolution=(4, 4),
                     description="ImageJ=1.11a\nimages=99\nslices=99\nspacing=0.5\nunit=micron\n")
    outside = tmp_path / "elsewhere" / "passwd"
    outside.parent.mkdir()
    outside.write_bytes(SECRET * 4)
    os.symlink(outside, cam / "frame_006.tif")
    _npy(cam / "frame_007.npy", _ri(7), voxel_size_um=[0.0004, 0.0002, 0.0002])
    _npy(cam / "frame_009.npy", np.full((64, 256, 256), 1.34, np.float32), voxel_size_um=[4.0, 4.0, 4.0])
    (cam / "frame_010.tif").write_bytes(SECRET * 8)
    _npy(cam / "frame_011.npy", _ri(11), time_s="tomorrow")
    tcf = cam / "frame_013.tcf"
    write_classic_tcf(tcf, [_ri(13, (8, 16, 16)), _ri(14, (8, 16, 16))], as_uint16=True)
    import h5py

    with h5py.File(tcf, "r+") as f:
        for t, time_s in enumerate((9.0, 3.0)):
            f[f"Data/3D/{t:06d}"].attrs["Time"] = np.array([time_s])
    with open(cam / "frame_014.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (64, 64, 64)})
        fh.write(_ri(14).tobytes()[:1000])
    (cam / "frame_014.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    _npy(cam / "frame_015.npy", _ri(15), medium_ri=13370)
    return cam


def _rows(out):
    with open(out / "frames.csv", newline="") as f:
        return list(csv.DictReader(f))


def _peak_rss_reset() -> bool:
    """Reset this process's peak resident memory (Linux: VmHWM), so that the next reading is this run's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def test_good_frames_survive_a_folder_of_bad_ones_and_a_restart_redoes_nothing(tmp_path, tiny_overrides):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VOXEL), "tile_zyx": list(SHAPE)})
    cam, out = _camera(tmp_path), tmp_path / "out"
    args = ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt), "--backend", "torch",
            "--once", "--settle", "0", "--no-masks", "--jsonl"]
    measured = _peak_rss_reset()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    if measured:  # the 4 um frame would take 64 GiB once resampled; the run stays near what the test process holds
        assert _peak_rss_mib() < 2048

    rows = {row["source"]: row for row in _rows(out)}
    good = {f"frame_{i:03d}.npy" for i in GOOD}
    assert {s for s, r in rows.items() if r["status"] == "ok"} == good
    assert [float(rows[s]["time_s"]) for s in sorted(good)] == [3.0 * i for i in GOOD]
    assert "frame_006.tif" not in rows  # the link out of the folder is not followed
    for name, (what, pattern) in BAD.items():
        if pattern is None:
            continue
        sources = [s for s in rows if s.split(":")[0] == name]
        assert sources, f"{name} ({what}) has no row"
        for source in sources:
            assert rows[source]["status"] == "failed", (what, rows[source])
            assert re.search(pattern, rows[source]["error"]), (what, rows[source]["error"])
    assert len(rows) == len(good) + len(BAD) - 1  # one row per file (the TCF is refused whole), the link none
    tables = (out / "frames.csv").read_bytes() + (out / "errors.log").read_bytes()
    assert b"SECRET" not in tables and b"root:x" not in tables

    # a restart finds nothing to do and rewrites nothing
    before = {p.name: p.read_bytes() for p in (out / "frames.csv", out / "errors.log")}
    res = CliRunner().invoke(main, [a for a in args if a != "--jsonl"])
    assert res.exit_code == 0, res.output
    assert "0 ok, 0 failed this run" in res.output
    assert {p.name: p.read_bytes() for p in (out / "frames.csv", out / "errors.log")} == before

    # the link is read when the user allows it: refused for what it holds, without quoting it
    res = CliRunner().invoke(main, [*args, "--follow-symlinks"])
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [(x["source"], x["status"]) for x in lines] == [("frame_006.tif", "failed")]
    assert "not a TIFF file" in lines[0]["error"]
    tables = (out / "frames.csv").read_bytes() + (out / "errors.log").read_bytes()
    assert b"SECRET" not in tables and b"root:x" not in tables
