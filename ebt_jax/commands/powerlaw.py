"""Power-law fits of loss against a scaling axis, with confidence intervals: `fit(x, loss)`.

Two laws, both fitted to log-loss (relative errors, which is how noise in a validation loss
behaves across orders of magnitude):
* the pure power law `L = a x^-b`, a straight line in log-log, fitted by ordinary least
  squares; `b` is the paper's "scaling rate" (the slope's magnitude in log-log);
* the law with an irreducible loss `L = a x^-b + c` (0 <= c < min L), fitted by a grid over
  `c` (each `c` is a straight-line fit of log(L - c)) refined by damped Gauss-Newton.
  It is kept only with at least 4 points and when it lowers the residual sum of squares
  significantly: an extra-sum-of-squares F test at 5% (one extra parameter).

Confidence intervals are Wald intervals from the fit's covariance, `s^2 (J^T J)^-1` with
`s^2` the residual variance, using Student t quantiles with n - p degrees of freedom:
exact for the straight line under Gaussian log-errors, a linearisation for the offset law.
(Bootstrapping over points would need many more points than a scaling grid has.)

numpy only: scipy is not a dependency of the project, and these fits are a few lines of
least squares; Student's t for integer degrees of freedom has a finite-series CDF.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics

import numpy as np

LEVEL = 0.95            # confidence level of every interval
F_TEST_ALPHA = 0.05     # the offset law must beat the pure law at this significance
_C_GRID = 64            # offsets tried before Gauss-Newton refines the best one


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: int) -> float:
  """The `q` quantile (q > 0.5) of Student's t with `df` degrees of freedom: P(|T| < t) =
  2q - 1 solved on three ever finer grids."""
  inside = 2 * q - 1
  hi = 1.0
  while _abs_t_cdf(np.array([hi]), df)[0] < inside:
    hi *= 2
  lo = 0.0
  for _ in range(3):
    grid = np.linspace(lo, hi, 1025)
    i = int(np.searchsorted(_abs_t_cdf(grid, df), inside))
    lo, hi = grid[max(i - 1, 0)], grid[min(i, 1024)]
  return float((lo + hi) / 2)


def _abs_t_cdf(t: np.ndarray, df: int) -> np.ndarray:
  """P(|T| < t) for an integer `df`, the finite series of Abramowitz & Stegun 26.7.3/4."""
  theta = np.arctan(t / math.sqrt(df))
  cos2 = np.cos(theta) ** 2
  term, total = np.ones_like(t), np.ones_like(t)
  odd = df % 2
  for k in range(1, (df - 1) // 2 if odd else df // 2):
    term = term * cos2 * ((2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k))
    total = total + term
  if not odd:
    return np.sin(theta) * total
  if df == 1:
    return 2 * theta / math.pi
  return 2 / math.pi * (theta + np.sin(theta) * np.cos(theta) * total)


@dataclasses.dataclass
class Law:
  """One fitted law: `L = a x^-b (+ c)`; `b_ci` the interval on `b` (NaN without enough
  points for one), `rss` the residual sum of squares of log L."""
  a: float
  b: float
  c: float
  b_se: float
  b_ci: tuple[float, float]
  rss: float
  n: int

  def __call__(self, x):
    return self.a * np.asarray(x, float) ** -self.b + self.c

  def as_json(self) -> dict:
    return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Fit:
  """Both laws of one curve; `offset` is None where the offset law is not supported
  (fewer than 4 points, c at 0, or no significant improvement)."""
  pure: Law
  offset: Law | None

  @property
  def best(self) -> Law:
    return self.offset or self.pure

  def as_json(self) -> dict:
    return {"pure": self.pure.as_json(),
            "offset": self.offset.as_json() if self.offset else None}


def _finite(v):
  if isinstance(v, tuple):
    return [_finite(u) for u in v]
  return v if not isinstance(v, float) or math.isfinite(v) else None


def fit(x, loss) -> Fit:
  """Fits both laws to points (x > 0, loss > 0); at least 2 points."""
  x, loss = np.asarray(x, float), np.asarray(loss, float)
  if len(x) < 2 or len(np.unique(x)) < 2 or np.any(x <= 0) or np.any(loss <= 0):
    raise ValueError(f"a power law needs >= 2 distinct positive x and positive losses, got "
                     f"x={x.tolist()}, loss={loss.tolist()}")
  pure = _pure(x, loss)
  offset = _offset(x, loss, pure) if len(x) >= 4 else None
  return Fit(pure, offset)


def _interval(value: float, se: float, df: int) -> tuple[float, float]:
  if df < 1 or not math.isfinite(se):
    return (math.nan, math.nan)
  half = t_quantile((1 + LEVEL) / 2, df) * se
  return (value - half, value + half)


def _lines(logx, y):
  """Least-squares lines y = alpha - b logx through each row of y: (alpha, b, Sxx)."""
  mean_x = logx.mean()
  dx = logx - mean_x
  sxx = float(dx @ dx)
  b = -((y - y.mean(-1, keepdims=True)) @ dx) / sxx
  return y.mean(-1) + b * mean_x, b, sxx


def _pure(x, loss) -> Law:
  logx, y = np.log(x), np.log(loss)
  alpha, b, sxx = _lines(logx, y)
  rss = float(np.sum((y - alpha + b * logx) ** 2))
  df = len(x) - 2
  se = math.sqrt(rss / df / sxx) if df > 0 else math.nan
  return Law(math.exp(alpha), float(b), 0.0, se, _interval(float(b), se, df), rss, len(x))


def _offset_residuals(theta, logx, y):
  """Residuals of log L and their Jacobian in theta = (log a, b, c)."""
  log_a, b, c = theta
  g = np.exp(log_a - b * logx)
  h = g + c
  jac = np.stack([g / h, -g * logx / h, 1 / h], axis=1)
  return y - np.log(h), jac


def _offset(x, loss, pure: Law) -> Law | None:
  logx, y = np.log(x), np.log(loss)
  c_G = loss.min() * (1 - np.geomspace(1.0, 1e-3, _C_GRID))   # c = 0 up to near min L
  alpha_G, b_G, _ = _lines(logx, np.log(loss - c_G[:, None]))
  fitted_GxN = np.log(np.exp(alpha_G[:, None] - b_G[:, None] * logx) + c_G[:, None])
  i = int(np.argmin(np.sum((y - fitted_GxN) ** 2, axis=1)))
  theta = np.array([alpha_G[i], b_G[i], c_G[i]])
  rss = float(np.sum(_offset_residuals(theta, logx, y)[0] ** 2))
  damping = 1e-3
  for _ in range(100):   # Levenberg-Marquardt: damped Gauss-Newton keeping 0 <= c < min L
    r, jac = _offset_residuals(theta, logx, y)
    jtj = jac.T @ jac
    step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj)), jac.T @ r)
    trial = theta + step
    if 0 <= trial[2] < loss.min():
      trial_rss = float(np.sum(_offset_residuals(trial, logx, y)[0] ** 2))
      if trial_rss < rss:
        converged = rss - trial_rss < 1e-12 * max(rss, 1e-30)
        theta, rss, damping = trial, trial_rss, damping / 3
        if converged:
          break
        continue
    damping *= 4
    if damping > 1e8:
      break
  n, df = len(x), len(x) - 3
  if theta[2] <= 0 or rss <= 0:
    return None
  f_stat = (pure.rss - rss) / (rss / df)
  if f_stat < t_quantile(1 - F_TEST_ALPHA / 2, df) ** 2:   # F(1, df) quantile = t(df)^2
    return None
  _, jac = _offset_residuals(theta, logx, y)
  cov = rss / df * np.linalg.pinv(jac.T @ jac)
  se = math.sqrt(max(cov[1, 1], 0.0))
  b = float(theta[1])
  return Law(math.exp(theta[0]), b, float(theta[2]), se, _interval(b, se, df), rss, n)


def ratio(numerator: Law, denominator: Law) -> tuple[float, tuple[float, float]]:
  """numerator.b / denominator.b and its interval by the delta method (independent fits,
  normal quantile): the EBT's scaling rate relative to the Transformer++'s."""
  r = numerator.b / denominator.b
  rel = math.hypot(numerator.b_se / numerator.b, denominator.b_se / denominator.b)
  if not math.isfinite(rel):
    return r, (math.nan, math.nan)
  z = statistics.NormalDist().inv_cdf((1 + LEVEL) / 2)
  return r, (r - z * abs(r) * rel, r + z * abs(r) * rel)
