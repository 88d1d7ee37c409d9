"""Training curves: the loss per step and the validation metrics over the run.

:func:`plot_training` is called at the end of every ``deepis-rt train`` run (``<out>.loss.png``)
and can redraw the figure from a run's resumable state::

    python -m deepis_rt.train.plots ckpt.pt.state.pt curves.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.train.state import load_state, lr_halving_steps

__all__ = ["plot_training", "plot_state"]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_training(history: Sequence[float], validation: Sequence[dict[str, Any]], out_png: str | Path,
                  lr_halvings: Sequence[int] = (), title: str = "") -> Path:
    """Draw the loss per optimiser step and the validation metrics against the step.

    Parameters
    ----------
    history : sequence of float
        Training loss of each step.
    validation : sequence of dict
        Validation summaries with a ``step`` key (see :func:`deepis_rt.train.metrics.summarize`).
    out_png : path-like
        Where the PNG goes.
    lr_halvings : sequence of int
        Steps at which the learning rate halved (dotted lines).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(history, dtype=float)
    steps = np.arange(1, loss.size + 1)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    if loss.size:
        ax0.plot(steps, loss, color="0.75", lw=0.6, label="loss per step")
        ax0.plot(steps, _moving_average(loss, 50), color="tab:blue", lw=1.6, label="mean of 50 steps")
        ax0.set_yscale("log")
    for s in lr_halvings:
        if 0 < s <= max(loss.size, 1):
            ax0.axvline(s, color="0.4", ls=":", lw=0.8)
    ax0.set_xlabel("optimiser step")
    ax0.set_ylabel("edge-weighted L1 (um)")
    ax0.set_title("training loss (dotted: learning rate halved)", fontsize=10)
    ax0.legend(fontsize=8)

    rows = [v for v in validation if "step" in v]
    if rows:
        vs = [int(v["step"]) for v in rows]

        def series(key: str) -> list[float]:
            out = []
            for v in rows:
                x = v.get(key)
                out.append(float(x) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else np.nan)
            return out

        ax1.plot(vs, series("dice_cart_mean"), "o-", color="tab:red", label="Dice CAR-T (mean)")
        ax1.plot(vs, series("dice_target_mean"), "o-", color="tab:cyan", label="Dice target (mean)")
        ax1.set_ylim(0, 1.02)
        ax1.set_ylabel("Dice")
        ax2 = ax1.twinx()
        ax2.plot(vs, [100 * v for v in series("is_area_error_geometric_median")], "s--", color="goldenrod",
                 label="IS-area error vs truth, median (%)")
        ax2.set_ylabel("IS-area error (%)")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax1.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower center")
    else:
        ax1.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("optimiser step")
    ax1.set_title("validation (synthetic validation videos)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_state(state_file: str | Path, out_png: str | Path) -> Path:
    """Redraw the training curves from a run's ``<out>.state.pt``."""
    state = load_state(Path(state_file))
    cfg = json.loads(state["config"])
    validation = json.loads(state.get("val_history", "[]"))
    halvings = lr_halving_steps(cfg["lr_halve_epochs"], state.get("epoch_steps") or cfg.get("epoch_steps") or 10,
                                 len(state["history"]))
    return plot_training(state["history"], validation, out_png, halvings, title=f"{cfg['preset']}, seed {cfg['seed']}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Draw the training curves of a deepis-rt training state.")
    p.add_argument("state", help="<out>.state.pt written by deepis-rt train")
    p.add_argument("png")
    args = p.parse_args(argv)
    print(plot_state(args.state, args.png))


if __name__ == "__main__":
    main()
