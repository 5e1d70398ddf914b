#!/usr/bin/env python
"""The README's loss curves, every value computed by lossd's own kernels.

    python docs/make_figures.py [--out docs/figures]

- ``loss_01.png``: cross-entropy against the logit s for y = 1 and y = 0 (the {0,1} form);
- ``loss_margin.png``: losses against the margin m = y·s (the {-1,+1} form): cross-entropy
  beside squared error and the margin losses (hinge, squared hinge, modified Huber,
  exponential, 0-1);
- ``gradient.png``: the gradient σ(s) − y of cross-entropy beside that of squared error
  (σ(s) − y)², which vanishes where a sigmoid output is confidently wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
S = np.linspace(-6.0, 6.0, 601)
MARGIN_LOSSES = ("cross_entropy", "squared_error", "hinge", "squared_hinge", "modified_huber",
                 "exponential", "zero_one")


def per_element(kernels, s: np.ndarray, y: float, **options) -> np.ndarray:
    return kernels.loss(s, np.full_like(s, y), reduction="none", **options).losses


def margin_curve(kernels, name: str, m: np.ndarray) -> np.ndarray:
    """Loss against the margin m with label +1: the margins form for the margin losses and
    cross-entropy; squared error is defined on {0,1} labels, so (σ(m) − 1)² on logits."""
    if name == "squared_error":
        return per_element(kernels, m, 1.0, loss=name)
    return per_element(kernels, m, 1.0, input="margins", loss=name)


def draw(out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lossd import kernels

    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for y, color in ((1.0, "tab:blue"), (0.0, "tab:orange")):
        ax.plot(S, per_element(kernels, S, y), color=color, label=f"y = {y:g}: (1−y)·s − log σ(s)")
    ax.set(xlabel="logit s (p = σ(s))", ylabel="cross-entropy", ylim=(0, 6.5),
           title="Cross-entropy on logits, labels {0, 1}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "loss_01.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in MARGIN_LOSSES:
        lw = 2.5 if name == "cross_entropy" else 1.4
        ax.plot(S, margin_curve(kernels, name, S), lw=lw, label=name.replace("_", " "),
                drawstyle="steps-mid" if name == "zero_one" else "default")
    ax.set(xlabel="margin m = y·s, labels {−1, +1}", ylabel="loss", ylim=(0, 4.5),
           title="Cross-entropy and the margin losses")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "loss_margin.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for y, color in ((1.0, "tab:blue"), (0.0, "tab:orange")):
        ce = kernels.grad(S, np.full_like(S, y), reduction="none").grad
        se = kernels.grad(S, np.full_like(S, y), reduction="none", loss="squared_error").grad
        ax.plot(S, ce, color=color, lw=2.2, label=f"cross-entropy, y = {y:g}: σ(s) − y")
        ax.plot(S, se, color=color, ls="--", label=f"squared error, y = {y:g}: 2(σ(s) − y)·σ(s)σ(−s)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="logit s", ylabel="d loss / d s",
           title="Gradients: cross-entropy keeps pulling where squared error stalls")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5)
    written.append(_save(fig, out / "gradient.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    args = ap.parse_args(argv)
    for path in draw(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
