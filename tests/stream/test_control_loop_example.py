import runpy
import sys
from pathlib import Path

import torch

from deepis_rt.checkpoint import save_checkpoint
from deepis_rt.model import build_model

EXAMPLE = Path(__file__).parents[2] / "examples" / "control_loop.py"


def test_control_loop_example_runs(tmp_path, monkeypatch, capsys, tiny_overrides):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides))
    monkeypatch.setattr(sys, "argv", ["control_loop.py", "--frames", "3", "--model", str(ckpt)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("t=")]
    assert len(lines) == 3 and all(" ok " in line for line in lines)
    assert "next frame in" in out
