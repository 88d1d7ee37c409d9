"""Saturation fit A(t) = A_max t / (t + tau_half)."""

import math

import numpy as np
import pytest

from deepis_rt.analysis import fit_saturation, saturation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_parameters_from_noisy_samples(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, 400.0, 5.0)
    y = saturation(t, 106.0, 40.0) + rng.normal(0.0, 4.0, t.size)
    fit = fit_saturation(t, y)
    assert fit.success and fit.n_points == t.size
    assert fit.a_max == pytest.approx(106.0, abs=4 * fit.a_max_err + 1e-9)
    assert fit.tau_half_s == pytest.approx(40.0, abs=4 * fit.tau_half_err_s + 1e-9)
    assert abs(fit.a_max - 106.0) / 106.0 < 0.05
    assert abs(fit.tau_half_s - 40.0) / 40.0 < 0.15
    assert 0 < fit.a_max_err < 5 and 0 < fit.tau_half_err_s < 10
    assert 0.9 < fit.r_squared <= 1.0
    np.testing.assert_allclose(fit.predict(np.array([40.0])), [fit.a_max * 40 / (40 + fit.tau_half_s)])


def test_noise_free_fit_is_exact():
    t = np.linspace(0, 300, 31)
    fit = fit_saturation(t, saturation(t, 50.0, 25.0))
    assert fit.a_max == pytest.approx(50.0, rel=1e-5)
    assert fit.tau_half_s == pytest.approx(25.0, rel=1e-5)
    assert fit.r_squared == pytest.approx(1.0)


@pytest.mark.parametrize(
    "t,y,reason",
    [
        ([], [], "usable point"),
        ([0.0, 5.0], [0.0, 3.0], "usable point"),
        ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], "same time"),
        ([0.0, 5.0, math.nan, 10.0], [0.0, 1.0, 2.0, math.nan], "usable point"),
        ([0.0, 1.0], [1.0], "values"),
    ],
)
def test_too_few_points_is_a_result_not_an_exception(t, y, reason):
    fit = fit_saturation(t, y)
    assert not fit.success
    assert reason in fit.message
    assert math.isnan(fit.a_max) and math.isnan(fit.tau_half_s)
    assert np.isnan(fit.predict(np.array([1.0, 2.0]))).all()
    assert fit.to_dict()["a_max"] is None


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_all_zero_values_are_not_a_fit(sigma):
    """Nothing rises (a CAR-T that never moves): A_max = 0 leaves tau_half free; the fit returned its
    starting guess (the median time) as tau_half with a finite error, and success=True."""
    t = np.arange(0.0, 300.0, 3.0)
    sig = None if sigma is None else np.full(t.size, sigma)
    fit = fit_saturation(t, np.zeros(t.size), sigma=sig, onset_window_s=3.0)
    assert not fit.success and "0" in fit.message
    assert math.isnan(fit.tau_half_s) and math.isnan(fit.tau_half_err_s) and math.isnan(fit.a_max)
    assert fit.n_points == t.size
