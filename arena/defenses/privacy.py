"""Privacy accounting shared by the `noise` and `dp-sgd` defenses.

The two defenses use the same mechanisms (Gaussian noise, clipped) and the same code below, but
their ε are *different guarantees* and are reported under different keys, each with its scope and
its neighbouring relation spelled out beside it:

- `noise`: ``epsilon_activations`` — the activations of one example given the client network,
  *replace-one* relation (the server ties each released row to its example; sensitivity 2·clip).
- `dp-sgd`: ``epsilon_weights`` — the client's front weights, *add/remove-one* relation with
  Poisson sampling (Opacus's convention; sensitivity max_grad_norm).

Conventions of the functions here:

- ``noise_multiplier`` = noise standard deviation / sensitivity, where the sensitivity is the one
  of the caller's relation (the caller converts: `noise` passes scale/(2·clip)).
- Per release, the Gaussian mechanism's ε is the *analytic* one (Balle & Wang 2018, Thm. 8): the
  exact privacy profile δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ), μ = 1/noise_multiplier, solved
  for ε. The classic bound √(2 ln(1.25/δ))/noise_multiplier (Dwork & Roth, Thm. A.1, valid for
  ε < 1 only) is offered for comparison. Neither depends on the relation once the sensitivity is.
- Composition goes through Opacus's accountants (RDP by default, or PRV), which model a
  Poisson-subsampled Gaussian mechanism with the given sample rate and number of steps. At sample
  rate 1 (no subsampling) that is plain composition and holds for either relation; at a rate
  below 1 it is amplification by subsampling, which Opacus derives for add/remove-one.
"""
from __future__ import annotations

import math

ACCOUNTANTS = ("rdp", "prv")
RDP_ORDERS = ([1 + x / 1000 for x in range(1, 100)] + [1 + x / 10.0 for x in range(1, 100)]
              + list(range(12, 64)) + [64, 80, 96, 128, 192, 256, 512, 1024])


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError as e:  # pragma: no cover - opacus is a declared extra
        raise ImportError("privacy accounting needs opacus: pip install 'opacus>=1.4'") from e


def check_delta(delta: float) -> float:
    """δ of an (ε, δ) guarantee: a number strictly between 0 and 1 (NaN and infinities included out)."""
    try:
        v = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}") from None
    if not 0 < v < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return v


def _check(noise_multiplier: float, delta: float) -> None:
    if not (noise_multiplier >= 0 and not math.isnan(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    check_delta(delta)


def gaussian_delta(epsilon: float, noise_multiplier: float) -> float:
    """Exact δ(ε) of one Gaussian mechanism with sensitivity 1 and σ = noise_multiplier."""
    from scipy.special import log_ndtr, ndtr

    mu = 1.0 / noise_multiplier
    a, b = mu / 2 - epsilon / mu, -mu / 2 - epsilon / mu
    return float(ndtr(a) - math.exp(min(epsilon + float(log_ndtr(b)), 700.0)))


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Smallest ε for which one Gaussian release is (ε, δ)-DP (Balle & Wang 2018); inf without noise."""
    _check(noise_multiplier, delta)
    if noise_multiplier == 0:
        return math.inf
    if math.isinf(noise_multiplier):
        return 0.0
    if gaussian_delta(0.0, noise_multiplier) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, noise_multiplier) > delta:
        lo, hi = hi, 2 * hi
        if hi > 1e8:
            return math.inf
    for _ in range(200):  # bisection: δ(ε) decreases in ε
        mid = (lo + hi) / 2
        if gaussian_delta(mid, noise_multiplier) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-10 * max(hi, 1.0):
            break
    return hi


def classic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Dwork & Roth's σ = √(2 ln(1.25/δ))·Δ/ε solved for ε; a valid bound only where it is < 1."""
    _check(noise_multiplier, delta)
    return math.inf if noise_multiplier == 0 else math.sqrt(2 * math.log(1.25 / delta)) / noise_multiplier


def composed_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                     accountant: str = "rdp") -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian releases, with Opacus's RDP or PRV accountant."""
    _check(noise_multiplier, delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    _opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    # RDP: Opacus's default orders plus orders near 1 (optimal at small noise multipliers) and large ones
    extra = {"alphas": RDP_ORDERS} if accountant == "rdp" else {}
    try:
        eps = float(acc.get_epsilon(delta=delta, **extra))
    except (ValueError, RuntimeError, OverflowError):  # PRV's domain blows up at tiny noise
        if accountant == "prv":
            return composed_epsilon(noise_multiplier, sample_rate, steps, delta, "rdp")
        raise
    return eps if math.isfinite(eps) else math.inf


def releases_per_example(steps: int, batch_size: int, n_train: int) -> int:
    """How often each example was sent at most: shuffled epochs, one release per epoch started."""
    per_epoch = math.ceil(n_train / batch_size)
    return math.ceil(steps / per_epoch)
