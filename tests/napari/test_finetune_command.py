"""The fine-tuning the annotate widget runs: ``deepis-rt train --data DIR --init CKPT`` in a child process,
its progress read from its log, interrupted (state saved) and continued."""

from __future__ import annotations

import pytest
import torch

from deepis_rt.checkpoint import load_checkpoint, save_checkpoint
from deepis_rt.model import build_model
from deepis_rt.train.loop import state_path

VS = (1.0, 0.5, 0.5)


def test_finetune_reports_steps_and_cancel_saves_the_state(tmp_path, tiny_overrides):
    pytest.importorskip("magicgui", reason="the widget module needs magicgui (pip install 'deepis-rt[napari]')")
    from deepis_rt.napari.widgets.annotate import finetune, finetune_command
    from deepis_rt.synth import write_timelapse

    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "start.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VS), "tile_zyx": [16, 32, 32]})
    write_timelapse(tmp_path / "data", 3, 4, shape=(16, 32, 32), voxel_size_um=VS, fmt="npy", progress=False)
    out = tmp_path / "tuned.pt"
    command = finetune_command(tmp_path / "data", str(init), out, 100_000, 1e-4, VS)
    assert command[4:7] == ["train", "--data", str(tmp_path / "data")] and "--resume" in command
    run = finetune(command + ["--crop", "16", "32", "32", "--threads", "1", "--val-frames", "0"])
    assert next(run) == 10  # the first step the command logs
    run.close()  # as Cancel does: the command is interrupted, and saves its state for --resume
    saved = torch.load(state_path(out), weights_only=True)
    assert saved["step"] >= 10 and not out.exists()
    assert load_checkpoint(init).sha256  # the starting checkpoint is untouched


def test_finetune_failure_is_raised_with_the_commands_error_line():
    """A failed command (here a stand-in that fails as deepis-rt does) is raised with its one-line error."""
    import sys

    pytest.importorskip("magicgui", reason="the widget module needs magicgui (pip install 'deepis-rt[napari]')")
    from deepis_rt.napari.widgets.annotate import finetune

    script = ("import sys; print('D deepis_rt: traceback'); print('deepis-rt: error: train | DIR: no such folder'); "
              "sys.exit(2)")
    with pytest.raises(RuntimeError, match=r"^deepis-rt train exited with 2: deepis-rt: error: train \| DIR: no such folder$"):
        list(finetune([sys.executable, "-c", script]))
