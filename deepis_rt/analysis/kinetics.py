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

__all__ = ["KineticFit", "fit_saturation", "saturation"]

#: fewer points than this cannot constrain two parameters with an uncertainty
MIN_POINTS = 3


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
    the law use ``t - onset_offset_s``. On failure the numbers are NaN,
    ``success`` is False and ``message`` says why.
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
        When > 0, the true onset is fitted too: ``A(t) = A_max (t - t0) / (t - t0 + tau_half)``
        with ``-onset_window_s <= t0 <= 0`` (``onset_offset_s``). A contact seen first at
        ``t = 0`` began somewhere in the preceding frame interval; fixing ``t0 = 0`` there
        shortens tau_half by up to that interval. Needs one more point (4).

    Returns
    -------
    KineticFit
        With ``success=False`` (not an exception) for fewer than 3 usable
        points, no time span, no value above 0, or a fit that does not converge.
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
    t_pos = t[t > 0]
    tau0 = float(np.median(t_pos)) if t_pos.size else span / 2
    a0 = max(float(np.max(v)) * 1.2, 1e-9)
    window = float(onset_window_s) if np.isfinite(onset_window_s) and onset_window_s > 0 else 0.0
    free_onset = window > 0 and n > MIN_POINTS and float(t.min()) >= 0.0
    model = _shifted if free_onset else saturation
    p0 = (a0, tau0, -0.5 * window) if free_onset else (a0, tau0)
    lower = [0.0, 1e-6 * max(span, 1.0)] + ([-window] if free_onset else [])
    upper = [np.inf, np.inf] + ([0.0] if free_onset else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, pcov = curve_fit(
                model,
                t,
                v,
                p0=p0,
                sigma=sig,
                absolute_sigma=sig is not None,
                bounds=(lower, upper),
                maxfev=5000,
            )
    except (RuntimeError, ValueError) as exc:
        return KineticFit(n_points=n, message=f"fit did not converge: {exc}")
    residual = v - model(t, *popt)
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((v - v.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    with np.errstate(invalid="ignore"):
        err = np.sqrt(np.diag(pcov)) if n > len(popt) else np.full(len(popt), math.nan)
    err = [float(e) if np.isfinite(e) else math.nan for e in err]
    chi2 = math.nan
    if sig is not None and n > len(popt):
        chi2 = float(np.sum((residual / sig) ** 2) / (n - len(popt)))
    return KineticFit(
        a_max=float(popt[0]),
        a_max_err=err[0],
        tau_half_s=float(popt[1]),
        tau_half_err_s=err[1],
        r_squared=r2,
        n_points=n,
        success=True,
        message="ok",
        weighted=sig is not None,
        chi2_reduced=chi2,
        onset_offset_s=float(popt[2]) if free_onset else 0.0,
    )
