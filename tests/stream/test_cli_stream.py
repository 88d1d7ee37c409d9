import json

import pytest
import torch
from click.testing import CliRunner
from stream_support import VOXEL, conjugate_distance

from deepis_rt.checkpoint import save_checkpoint
from deepis_rt.cli import main
from deepis_rt.io import write_tomogram
from deepis_rt.model import build_model
from deepis_rt.synth.scene import make_video


def _setup(tmp_path, tiny_overrides):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VOXEL), "tile_zyx": [32, 64, 64]})
    cam = tmp_path / "cam"
    for i in range(2):
        write_tomogram(cam / f"frame_{i}.npy", 1.337 + 0.01 * (conjugate_distance(2.5) > 0), VOXEL, fmt="npy")
    (cam / "frame_2.npy").write_text("garbage")
    return ckpt, cam


def test_stream_cli_jsonl_and_summary(tmp_path, tiny_overrides):
    ckpt, cam = _setup(tmp_path, tiny_overrides)
    out = tmp_path / "out"
    args = ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt), "--backend", "torch",
            "--once", "--settle", "0"]
    res = CliRunner().invoke(main, [*args, "--jsonl"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [x["source"] for x in lines] == ["frame_0.npy", "frame_1.npy", "frame_2.npy"]
    assert [x["status"] for x in lines] == ["ok", "ok", "failed"]
    assert lines[2]["error"]
    # a second run on the same --out has nothing left to do, and says so in its summary
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "0 ok, 0 failed this run (2 ok / 1 failed in total)" in res.output
    assert "results:" in res.output


def test_stream_cli_missing_source_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["stream", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output


def test_demo_runs_end_to_end_and_protects_foreign_folders(tmp_path, tiny_overrides):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "2", "--pace", "0.2", "--model", str(ckpt), "--backend", "torch"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "frames: 2 ok, 0 failed" in res.output and "demo finished" in res.output
    assert len((out / "frames.csv").read_text().splitlines()) == 3
    # the demo knows its truth: reported next to the fit
    truth = json.loads((out / "summary.json").read_text())["truth"]
    assert truth["truth"]["a_max_um2"] == pytest.approx(make_video(2026, (64, 128, 128), (0.5, 0.25, 0.25), 2).a_max_um2)
    assert "synthetic truth: A_max true" in res.output
    # a second demo replaces its own results; a folder it did not make is left alone
    assert CliRunner().invoke(main, args).exit_code == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "data.txt").write_text("precious")
    res = CliRunner().invoke(main, [*args[:1], "--out", str(foreign), *args[3:]])
    assert res.exit_code == 2 and (foreign / "data.txt").read_text() == "precious"


@pytest.mark.parametrize("option, message", [
    (["--frame-interval", "-2"], "frame_interval_s"),       # frames would get negative times
    (["--frame-interval", "0"], "frame_interval_s"),
    (["--idle-timeout", "-1"], "idle_timeout_s"),
    (["--medium-ri", "nan"], "medium_ri"),                 # dry mass silently left empty
    (["--medium-ri", "1337"], "medium_ri"),                # negative dry masses
    (["--settle", "nan"], "settle_s"),                     # no file would ever be complete: --once never ends
    (["--voxel-size", "nan", "0.25", "0.25"], "voxel_size_um"),
    (["--max-batch", "0"], "max_batch"),
])
def test_stream_refuses_options_out_of_range_before_loading_the_model(tmp_path, option, message):
    cam = tmp_path / "cam"
    cam.mkdir()
    # the model does not exist: a refused option must be said before anything is loaded
    args = ["stream", "--source", str(cam), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no.pt"),
            "--once", *option]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert f"deepis-rt: error: stream: {message}" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_batch_refuses_options_out_of_range_before_any_item_runs(tmp_path):
    archive = tmp_path / "archive"
    write_tomogram(archive / "a" / "frame_0.npy", 1.337 + 0.01 * (conjugate_distance(2.5) > 0), VOXEL, fmt="npy")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["batch", str(archive), "--out", str(out), "--model", str(tmp_path / "no.pt"),
                                    "--frame-interval", "-1", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "deepis-rt: error: stream: frame_interval_s" in res.output
    assert not out.exists()


def test_idle_timeout_waits_for_files_still_settling(tmp_path, tiny_overrides):
    # frames already in the folder are not "no new frames": an idle timeout shorter than --settle
    # used to end the stream before they were complete, with nothing processed
    ckpt, cam = _setup(tmp_path, tiny_overrides)
    (cam / "frame_2.npy").unlink()
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt),
                                    "--backend", "torch", "--settle", "1", "--idle-timeout", "0.2"])
    assert res.exit_code == 0, res.output
    assert "frames: 2 ok, 0 failed this run" in res.output


def test_demo_refuses_zero_frames_before_touching_anything(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--frames", "0"])
    assert res.exit_code == 2, res.output
    assert "--frames" in res.output and "max_frames" not in res.output
    assert not out.exists()


def test_a_results_folder_of_another_source_is_refused_not_silently_skipped(tmp_path):
    """Two experiments whose files have the same names, one --out: the second run would count its
    frames as done (by file name) and skip them all; it is refused, unless the same frames moved."""
    from stream_support import VOXEL, conjugate_tomogram, make_segmenter

    from deepis_rt.errors import ConfigError
    from deepis_rt.io import write_tomogram
    from deepis_rt.stream import Stream

    first, second, out = tmp_path / "exp1", tmp_path / "exp2", tmp_path / "results"
    for folder, radius in ((first, 2.0), (second, 3.0)):
        folder.mkdir()
        for i in range(2):
            write_tomogram(folder / f"frame_{i:04d}.npy", conjugate_tomogram(radius), VOXEL, fmt="npy")
    settings = {"once": True, "settle_s": 0.0, "use_events": False, "write_masks": False}
    assert Stream(first, out, make_segmenter(), **settings).run()["frames_ok"] == 2
    with pytest.raises(ConfigError, match=r"holds the results of .*exp1, not of .*exp2.*--allow-other-source"):
        Stream(second, out, make_segmenter(), **settings).start()
    assert Stream(first, out, make_segmenter(), **settings).run()["frames_ok"] == 2  # the same source continues
    moved = tmp_path / "moved"
    first.rename(moved)  # the same frames in a new place: allowed when asked, nothing redone
    summary = Stream(moved, out, make_segmenter(), check_source=False, **settings).run()
    assert summary["run"]["frames_ok"] == 0 and summary["frames_ok"] == 2


def test_stream_exits_1_when_every_frame_of_the_run_failed(tmp_path, tiny_overrides):
    """For scripts: a run in which no frame succeeded (here: files without a voxel size) is not a success."""
    ckpt, _ = _setup(tmp_path, tiny_overrides)
    cam = tmp_path / "bare"
    cam.mkdir()
    import numpy as np

    for i in range(2):
        np.save(cam / f"frame_{i}.npy", np.full((32, 64, 64), 1.337, np.float32))  # no sidecar: no voxel size
    args = ["stream", "--source", str(cam), "--out", str(tmp_path / "out"), "--model", str(ckpt),
            "--backend", "torch", "--once", "--settle", "0"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert "0 ok, 2 failed this run" in res.output


def test_stream_once_on_a_folder_without_tomograms_says_where_to_look(tmp_path, tiny_overrides):
    ckpt, _ = _setup(tmp_path, tiny_overrides)
    archive = tmp_path / "archive"
    (archive / "cell1").mkdir(parents=True)
    (archive / "notes.txt").write_text("not a tomogram")
    res = CliRunner().invoke(main, ["stream", "--source", str(archive), "--out", str(tmp_path / "out"),
                                    "--model", str(ckpt), "--backend", "torch", "--once", "--settle", "0"])
    assert res.exit_code == 0, res.output
    assert "no tomogram found" in res.output and "deepis-rt batch" in res.output


def test_stream_cli_newest_first_with_a_live_model(tmp_path, tiny_overrides):
    ckpt, cam = _setup(tmp_path, tiny_overrides)
    (cam / "frame_2.npy").unlink()
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt),
                                    "--backend", "torch", "--once", "--settle", "0", "--live", "newest",
                                    "--live-model", str(ckpt), "--jsonl"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    main_lines = [x for x in lines if x.get("model") == "main"]
    assert sorted(x["frame"] for x in main_lines) == [0, 1] and all("deferred" in x for x in main_lines)
    assert {x["frame"] for x in lines if x.get("model") == "live"} <= {0, 1}
    assert (out / "live" / "frames.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["policy"] == "newest" and summary["live"]["backend"] == "torch-cpu"


def test_backlog_reports_for_people_and_for_programs(capsys):
    from deepis_rt.cli.stream import BacklogReporter
    from deepis_rt.stream.backlog import BacklogEvent

    behind = BacklogEvent("behind", 1.0, 2.5, 1.1, 6, latency_s=3.7, latency_trend_s_per_s=0.42)
    back = BacklogEvent("caught_up", 2.0, 0.5, 1.1, 1, behind_s=12.3, max_waiting_frames=9)
    BacklogReporter(jsonl=True)(behind)
    BacklogReporter(jsonl=True)(back)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == ["backlog_behind", "backlog_caught_up"]
    assert lines[0]["waiting_frames"] == 6 and lines[0]["arrival_fps"] == 2.5 and lines[1]["behind_s"] == 12.3
    BacklogReporter()(behind)
    BacklogReporter()(back)
    err = capsys.readouterr().err
    assert "falling behind: frames arrive at 2.50/s, processed at 1.10/s; 6 waiting, latency 3.7 s" in err
    assert "caught up after 12.3 s behind (at most 9 frames waited)" in err


def test_summary_says_not_constrained_instead_of_printing_a_runaway_fit(capsys):
    """A fit whose A_max is uncertain by more than itself is no measurement: the terminal says so, and
    the truth comparison shows no relative error for it."""
    from deepis_rt.analysis import SynapseSummary
    from deepis_rt.analysis.kinetics import KineticFit
    from deepis_rt.cli.stream import print_summary

    runaway = KineticFit(a_max=9.99e7, a_max_err=3.4e15, tau_half_s=25.3, tau_half_err_s=2.6, r_squared=0.9,
                         n_points=20, success=True, message="A_max not constrained", weighted=True)
    syn = SynapseSummary(1, 2, 0.0, 60.0, 20, 54.5, runaway, KineticFit()).to_dict()
    summary = {"run": {"frames_ok": 20, "frames_failed": 0, "throughput_fps": 0.3, "latency_ms": {"n": 0}},
               "frames_ok": 20, "frames_failed": 0, "backend": "openvino-cpu", "synapses": [{**syn, "synapse_id": 1}],
               "truth": {"A_max_um2": {"true": 77.3, "fitted": 9.99e7, "fit_err": 3.4e15, "rel_error": 1.29e6},
                         "tau_half_s": {"true": 23.7, "fitted": 25.3, "fit_err": 2.6, "rel_error": 0.07}}}
    print_summary(summary, None)
    out = capsys.readouterr().out
    assert "A_max not constrained (9.99e+07 +- 3.4e+15 um^2), tau_half 25.3 +- 2.6 s" in out
    assert "fitted not constrained (9.99e+07 +- 3.4e+15); tau_half true 23.7 s, fitted 25.3 +- 2.6 (+7 %)" in out
    assert "99900000" not in out and "+129" not in out
