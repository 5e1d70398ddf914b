"""docs/make_figures.py: the README's curves come from lossd's kernels and match the
formulas the README gives for them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from lossd import kernels

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_curves_are_the_documented_formulas() -> None:
    fig = _script()
    m = np.linspace(-3, 3, 61)
    sig = 1 / (1 + np.exp(-m))
    expected = {"cross_entropy": np.log1p(np.exp(-m)), "squared_error": (sig - 1) ** 2,
                "hinge": np.maximum(0, 1 - m), "squared_hinge": np.maximum(0, 1 - m) ** 2,
                "modified_huber": np.where(m < -1, -4 * m, np.maximum(0, 1 - m) ** 2),
                "exponential": np.exp(-m), "zero_one": (m <= 0).astype(float)}
    for name in fig.MARGIN_LOSSES:
        np.testing.assert_allclose(fig.margin_curve(kernels, name, m), expected[name], rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    np.testing.assert_allclose(fig.per_element(kernels, m, 0.0), np.log1p(np.exp(m)), rtol=1e-12)


def test_the_script_draws_the_three_figures(tmp_path: Path) -> None:
    written = _script().draw(tmp_path)
    assert sorted(p.name for p in written) == ["gradient.png", "loss_01.png", "loss_margin.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
