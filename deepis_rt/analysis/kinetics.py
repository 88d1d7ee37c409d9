"""Synapse kinetics: the saturation law A(t) = A_max * t / (t + tau_half).

The paper fits the IS area from the onset of contact with this form
(A_max ~ 106 um^2, tau_half ~ 40 s) and uses the same form for the CAR-T
centroid displacement. :func:`fit_saturation` never raises on bad data: it
returns a :class:`KineticFit` with ``success=False`` and a message.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

log = logging.getLogger(__name__)

__all__ = ["KineticFit", "fit_saturation", "saturation", "parameter_text"]

#: fewer points than this cannot constrain two parameters with an uncertainty
MIN_POINTS = 3
#: a fit whose A_max or tau_half is uncertain by more than this fraction of itself does not constrain
#: it: the points do not level off within the recording (displays say "not constrained")
MAX_REL_ERROR = 1.0


def saturation(t_s: np.ndarray, a_max: float, tau_half_s: float) -> np.ndarray:
    """A(t) = a_max * t / (t + tau_half_s) (t >= 0, measured from onset)."""
    t = np.asarray(t_s, dtype=float)
    return a_max * t / (t + tau_half_s)


@dataclass(frozen=True)
class KineticFit:
    """Result of :func:`fit_saturation`.

    ``a_max`` is in the unit of the fitted quantity (um^2 for IS area, um for
    displacement); ``*_err`` are one-sigma uncertainties from the covariance
    matrix; ``r_squared`` is the coefficient of determination. With per-point
    uncertainties (``weighted``), the fit is weighted by them and its
    uncertainties are absolute (they follow from the points' sigmas, not from the
    scatter); ``chi2_reduced`` then tells whether the sigmas describe the scatter
    (about 1) or are too small (much above 1). ``onset_offset_s`` is the fitted
    onset relative to the first sample (<= 0; 0 when not fitted): ``predict`` and
    the law use ``t - onset_offset_s``; ``onset_offset_err_s`` is its one-sigma
    spread when the onset was treated as an interval. ``constrained`` is False when A_max or
    tau_half is uncertain by more than :data:`MAX_REL_ERROR` of itself (``message`` names it): the
    numbers are then no measurement, and displays say "not constrained" instead of showing them.
    On failure the numbers are NaN, ``success`` is False and ``message`` says why.
    """

    a_max: float = math.nan
    a_max_err: float = math.nan
    tau_half_s: float = math.nan
    tau_half_err_s: float = math.nan
    r_squared: float = math.nan
    n_points: int = 0
    success: bool = False
    message: str = ""
    weighted: bool = False
    chi2_reduced: float = math.nan
    onset_offset_s: float = 0.0
    onset_offset_err_s: float = math.nan
    constrained: bool = False

    def predict(self, t_s: np.ndarray) -> np.ndarray:
        """The fitted curve at times ``t_s`` from onset (NaN when the fit failed)."""
        if not self.success:
            return np.full(np.shape(t_s), np.nan)
        return _shifted(t_s, self.a_max, self.tau_half_s, self.onset_offset_s)

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def parameter_text(value: float | None, err: float | None, unit: str = "", pm: str = "+-", digits: int = 1) -> str:
    """A fitted parameter for display: ``"77.5 +- 30.5 um^2"``, or ``"not constrained (...)"`` when
    its error exceeds :data:`MAX_REL_ERROR` of it (or is unknown), ``"-"`` when there is none."""
    unit = f" {unit}" if unit else ""
    if value is None or not math.isfinite(value):
        return "-"
    if err is None or not math.isfinite(err):
        return f"not constrained ({value:.3g}{unit}, no error)"
    if err > MAX_REL_ERROR * abs(value):
        return f"not constrained ({value:.3g} {pm} {err:.2g}{unit})"
    return f"{value:.{digits}f} {pm} {err:.{digits}f}{unit}"


def _shifted(t_s: np.ndarray, a_max: float, tau_half_s: float, t0_s: float) -> np.ndarray:
    return saturation(np.asarray(t_s, dtype=float) - t0_s, a_max, tau_half_s)


def fit_saturation(
    t_s: Sequence[float],
    y: Sequence[float],
    sigma: Sequence[float] | None = None,
    onset_window_s: float = 0.0,
) -> KineticFit:
    """Fit y(t) = A_max * t / (t + tau_half) by non-linear least squares.

    Parameters
    ----------
    t_s : sequence of float
        Times in seconds from onset (t = 0 at contact); NaN pairs are ignored.
    y : sequence of float
        Observed values (IS area in um^2, displacement in um, ...).
    sigma : sequence of float, optional
        One-sigma uncertainty of each value (``is_area_err_um2`` for IS areas):
        the fit weights the points by ``1/sigma^2`` and its parameter errors are
        absolute (``scipy.optimize.curve_fit(..., absolute_sigma=True)``).
        Points with a missing or non-positive sigma get the median of the others.
    onset_window_s : float
        When > 0, the onset ``t0`` of ``A(t) = A_max (t - t0) / (t - t0 + tau_half)`` lies
        anywhere in ``-onset_window_s <= t0 <= 0``: a contact seen first at ``t = 0`` began
        somewhere in the interval since the last frame without it (fixing ``t0 = 0`` shortens
        tau_half by up to that interval). The fit treats ``t0`` as uniform over the interval and
        marginalises over it: A_max and tau_half are fitted at onsets across the interval (a
        coarse grid, then a fine one around the best), each weighted by its profile likelihood
        ``exp(-chi^2 / 2)``; the reported values are the weighted means and their errors include
        the spread between onsets. Needs one more point (4).

    Returns
    -------
    KineticFit
        With ``success=False`` (not an exception) for fewer than 3 usable
        points, no time span, no value above 0, or a fit that does not converge;
        ``constrained=False`` when a parameter's error exceeds :data:`MAX_REL_ERROR` of it.

    Notes
    -----
    When the points scatter more than their sigmas say (weighted, reduced chi^2 > 1), the
    parameter errors are scaled by sqrt(reduced chi^2): the sigmas were too small.
    """
    t = np.asarray(t_s, dtype=float).ravel()
    v = np.asarray(y, dtype=float).ravel()
    if t.shape != v.shape:
        return KineticFit(message=f"t_s has {t.size} values but y has {v.size}")
    ok = np.isfinite(t) & np.isfinite(v)
    sig = None
    if sigma is not None:
        sig = np.asarray(sigma, dtype=float).ravel()
        if sig.shape != v.shape:
            return KineticFit(message=f"sigma has {sig.size} values but y has {v.size}")
        sig = sig[ok]
        good = np.isfinite(sig) & (sig > 0)
        if not good.any():
            sig = None
        else:
            sig = np.where(good, sig, float(np.median(sig[good])))
    t, v = t[ok], v[ok]
    n = int(t.size)
    if n < MIN_POINTS:
        return KineticFit(n_points=n, message=f"only {n} usable point(s); need at least {MIN_POINTS}")
    span = float(t.max() - t.min())
    if span <= 0:
        return KineticFit(n_points=n, message="all samples at the same time")
    if not (v > 0).any():
        return KineticFit(n_points=n, message="no value above 0: nothing rises, tau_half is undefined")
    window = float(onset_window_s) if np.isfinite(onset_window_s) and onset_window_s > 0 else 0.0
    free_onset = window > 0 and n > MIN_POINTS and float(t.min()) >= 0.0
    if not free_onset:
        one = _fit_at_onset(t, v, sig, 0.0, span)
        if isinstance(one, str):
            return KineticFit(n_points=n, message=one)
        popt, pcov, chi2_sum = one
        params, errs, t0, t0_err = popt, np.sqrt(np.maximum(np.diag(pcov), 0)), 0.0, math.nan
    else:
        marginal = _marginalise_onset(t, v, sig, window, span)
        if isinstance(marginal, str):
            return KineticFit(n_points=n, message=marginal)
        params, errs, t0, t0_err, chi2_sum = marginal
    residual = v - _shifted(t, params[0], params[1], t0)
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((v - v.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    n_params = 3 if free_onset else 2
    chi2 = math.nan
    if sig is not None and n > n_params:
        chi2 = float(np.sum((residual / sig) ** 2) / (n - n_params))
    if n <= 2:
        errs = np.full(2, math.nan)
    elif sig is not None and chi2 > 1:
        errs = errs * math.sqrt(chi2)
    err = [float(e) if np.isfinite(e) else math.nan for e in errs]
    loose = [name for name, e, p in zip(("A_max", "tau_half"), err, params, strict=True)
             if not e <= MAX_REL_ERROR * p]
    message = "ok"
    if loose:
        message = (f"{' and '.join(loose)} not constrained (an error above {MAX_REL_ERROR:.0%} of the value): the "
                   "points do not level off within the recording, or their uncertainties are too wide to tell")
    return KineticFit(
        a_max=float(params[0]),
        a_max_err=err[0],
        tau_half_s=float(params[1]),
        tau_half_err_s=err[1],
        r_squared=r2,
        n_points=n,
        success=True,
        message=message,
        constrained=not loose,
        weighted=sig is not None,
        chi2_reduced=chi2,
        onset_offset_s=float(t0),
        onset_offset_err_s=float(t0_err),
    )


def _fit_at_onset(t: np.ndarray, v: np.ndarray, sig: np.ndarray | None, t0: float,
                  span: float) -> tuple[np.ndarray, np.ndarray, float] | str:
    """(A_max, tau_half), their covariance and the sum of squared (weighted) residuals for an onset
    fixed at ``t0``; a message when the fit fails."""
    t_pos = t[t - t0 > 0] - t0
    tau0 = float(np.median(t_pos)) if t_pos.size else span / 2
    a0 = max(float(np.max(v)) * 1.2, 1e-9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, pcov = curve_fit(
                lambda x, a, tau: _shifted(x, a, tau, t0), t, v, p0=(a0, tau0), sigma=sig,
                absolute_sigma=sig is not None, bounds=([0.0, 1e-6 * max(span, 1.0)], [np.inf, np.inf]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError) as exc:
        return f"fit did not converge: {exc}"
    residual = v - _shifted(t, popt[0], popt[1], t0)
    chi2 = float(np.sum((residual / sig) ** 2)) if sig is not None else float(np.sum(residual**2))
    return popt, pcov, chi2


#: onsets tried across the interval (coarse), then around the most likely one (fine)
_ONSET_GRID = (13, 13)


def _marginalise_onset(t: np.ndarray, v: np.ndarray, sig: np.ndarray | None, window: float, span: float):
    """Fits at onsets across ``[-window, 0]``, combined with their likelihoods (see :func:`fit_saturation`).

    Returns (params, errors, onset, onset error, chi^2 sum) or a message when no onset fits.
    """
    coarse = np.linspace(-window, 0.0, _ONSET_GRID[0])
    fits: dict[float, tuple[np.ndarray, np.ndarray, float]] = {}

    def run(onsets: np.ndarray) -> None:
        for t0 in onsets:
            if float(t0) not in fits:
                one = _fit_at_onset(t, v, sig, float(t0), span)
                if not isinstance(one, str) and np.all(np.isfinite(one[1])):
                    fits[float(t0)] = one

    run(coarse)
    if not fits:
        return "fit did not converge at any onset in the interval"
    best = min(fits, key=lambda k: fits[k][2])
    step = coarse[1] - coarse[0]
    run(np.linspace(max(best - step, -window), min(best + step, 0.0), _ONSET_GRID[1]))
    onsets = np.array(sorted(fits))
    params = np.array([fits[k][0] for k in onsets])
    covs = np.array([fits[k][1] for k in onsets])
    chi2 = np.array([fits[k][2] for k in onsets])
    if sig is None:  # unweighted: the scatter of the best onset stands for the points' sigma
        chi2 = chi2 / max(chi2.min() / max(t.size - 3, 1), 1e-300)
    # the profile likelihood of each onset; the Laplace volume term (sqrt det covariance) is left out:
    # with flat priors on A_max and tau_half it favours onsets where the two are degenerate (an onset
    # long before the first frame lets both run off together), which says nothing about the onset
    log_w = -0.5 * chi2
    # each onset stands for the part of the interval nearest to it (trapezoid widths)
    edges = np.concatenate([[onsets[0]], 0.5 * (onsets[1:] + onsets[:-1]), [onsets[-1]]])
    width = np.diff(edges) if onsets.size > 1 else np.ones(1)
    w = np.exp(log_w - log_w.max()) * np.maximum(width, 1e-12)
    w /= w.sum()
    mean = (w[:, None] * params).sum(axis=0)
    var = (w[:, None] * (np.diagonal(covs, axis1=1, axis2=2) + (params - mean) ** 2)).sum(axis=0)
    t0 = float((w * onsets).sum())
    t0_err = float(math.sqrt(max((w * (onsets - t0) ** 2).sum(), 0.0)))
    return mean, np.sqrt(var), t0, t0_err, float(chi2.min())
