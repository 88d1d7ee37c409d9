"""The fine-tuning the annotate widget runs: ``deepis-rt train --data DIR --init CKPT`` in a child process,
its progress read from its log, interrupted (state saved) and continued."""

from __future__ import annotations

import pytest
import torch

from deepis_rt.checkpoint import load_checkpoint, save_checkpoint
from deepis_rt.model import build_model
from deepis_rt.train.loop import state_path

VS = (1.0, 0.5, 0.5)


def test_finetune_reports_steps_can_be_interrupted_and_continued(tmp_path, tiny_overrides):
    pytest.importorskip("magicgui", reason="the widget module needs magicgui (pip install 'deepis-rt[napari]')")
    from deepis_rt.napari.widgets.annotate import finetune, finetune_command
    from deepis_rt.synth import write_timelapse

    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "start.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VS), "tile_zyx": [16, 32, 32]})
    write_timelapse(tmp_path / "data", 3, 4, shape=(16, 32, 32), voxel_size_um=VS, fmt="npy", progress=False)
    out = tmp_path / "tuned.pt"
    long = finetune(finetune_command(tmp_path / "data", str(init), out, 100_000, 1e-4, VS) + ["--crop", "16", "32", "32",
                                                                                             "--threads", "1"])
    assert next(long) == 10  # the first step the command logs
    long.close()  # as Cancel does: the command is interrupted and saves its state
    saved = torch.load(state_path(out), weights_only=True)
    assert saved["step"] >= 10 and not out.exists()
    items = list(finetune(finetune_command(tmp_path / "data", str(init), out, saved["step"] + 10, 1e-4, VS)
                          + ["--crop", "16", "32", "32", "--threads", "1"]))
    assert isinstance(items[-1], str) and all(isinstance(i, int) for i in items[:-1])
    assert "validation before (--init" in items[-1] and "validation after:" in items[-1]
    assert load_checkpoint(out).meta["training"]["steps"] == saved["step"] + 10
