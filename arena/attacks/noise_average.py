"""`noise-average`: link every release of an example, average away the `noise` defense, then invert.

Target defense: `noise` (adapts_to; its public ``scale``, ``clip`` and ``distribution`` are read from
``view.defense``, Kerckhoffs: never from the setup, never its random draws). New here, built on He et
al.'s white-box rMLE ("Model inversion attacks against collaborative inference", ACSAC 2019) with the
noise model of the defense in the likelihood; the averaging is the reason composing Gaussian releases
of one value costs ε (each release is an independent draw around it).

Threat model (SMASHED + SAMPLE_IDS + CLIENT_WEIGHTS): the protocol sends every training example once
per epoch, each time clipped and with fresh noise. A server that can link releases of one example
(SAMPLE_IDS: vertical split learning aligns sample ids) holds E noisy copies of it. It declares
coverage ``tracked = K`` (window "tracked": every release of K fixed training examples), groups the
releases by id and averages the last m of them: the noise's std falls from σ to σ/√m. It then
solves, per target, with the trained client f1 (white box) and the known clip,

    min_x  mean_d (clip(f1(x))_d − ā_d)² / (ĉ² + s²)  +  λ_TV·(1 + λ_noise·s²/ĉ²)·TV(x),

with s² = Var(noise)/m the noise the average leaves per coordinate and ĉ² the clean activations' mean
square (estimated: mean(ā²) − s², at least a tenth of mean(ā²)).
The MAP estimate under the Gaussian noise model up to the prior's weight: the fit's weight falls as
1/s² once noise dominates and the prior's grows with the noise-to-signal ratio, so the prior (TV)
takes over where the data says little; with s = 0 it is he-whitebox's scale-free ("relative") fit
at λ_TV 0.1 (a fixed λ_TV 0.5, better under noise, cost SSIM 0.98 → 0.86 undefended). Adam from a
grey image, x projected onto [0, 1], leaky ReLU gradients as in he-whitebox (he_inversion.invert).
``decoder = "network"`` instead applies the `informed-inverse` decoder (trained on the auxiliary set
through the client, each input the mean of m simulated releases) to the average; it adds AUX_DATA.

What the client changing between epochs costs: release e was computed by the client of epoch e, the
inversion uses the final client, so averaging old releases trades noise for drift. The attacker
estimates both from what it sees (the noise variance is public): the average of the last m leaves
noise D·var/m and drift ‖ā_m − r_last‖² − D·var·(m − 1)/m; with ``releases = 0`` (default) it
averages the m that minimises their sum (`choose_releases`, one m for all targets). Reported:
``extra["releases_mean"]`` (m), ``extra["drift_rel"]`` (estimated ‖c_e − c_last‖²/‖c‖², mean over
targets and earlier releases), ``extra["noise_rel"]`` (what the average leaves, s²·D/‖c‖²).
Undefended (no noise known) it uses the last release only: averaging would only add drift.
Measured (Fashion-MNIST, LeNet depth 1, 10k examples, 3 epochs, lr 2e-3, seed 0, 32 tracked
examples, scorer side): noise-free, the first two epochs' releases lie 5.7% (squared, relative)
from the last, and inverting their average instead of the last release costs SSIM 0.984 → 0.948.
Under noise (scale 0.5, clip 30) one release carries noise 1.5× the signal's energy, so the drift
(estimated 5%) is the smaller cost and all 3 releases are averaged; on the same 64 tracked targets,
one release → the average: MAP 0.484 → 0.502, network decoder 0.625 → 0.640; scale 1.0 (noise 5.6×
the signal, drift 9%): MAP 0.359 → 0.392, network 0.524 → 0.553. The oblivious he-whitebox gets
0.445 and 0.306 (on the last batch). So averaging helps, but 3 epochs give only √3 and the drift
eats part of it: the decoder (the image prior) matters more than the averaging.

Parameters: ``tracked`` (K targets, default 64), ``releases`` (0: chosen as above; n: the last n of
each target), ``decoder`` ("map" or "network"); map: ``iterations`` (300), ``lr`` (1e-2),
``lambda_tv`` (0.1), ``lambda_noise`` (4; a fixed λ_TV of 0.1/0.5/2 measured SSIM 0.55/0.58/0.56 at
scale 0.5 and 0.38/0.46/0.45 at 1.0), ``relu_slope`` (0.01), ``init`` (0.5), as he-whitebox;
network: ``n_aux`` (2000), ``epochs`` (10). Other defenses: it still runs (no noise model: the last
release, a plain relative fit).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..params import check_choice, check_positive_float, check_positive_int
from ..protocol.transcript import Coverage
from ..protocol.view import ServerView
from ..records import AttackNotApplicable, AttackOutput, Capability
from .base import Attack, register_attack
from .he_inversion import report, seeded, total_variation
from .informed_inverse import clip_rows, fit_inverse, simulation
from .unsplit_solver import leaky_relu_gradients


def noise_model(view: ServerView) -> tuple[float, float, int]:
    """(variance per coordinate, clip, clip norm p) of the `noise` member the view's defense knowledge
    names; (0, inf, 2) when the client runs no noise. Public parameters only (Kerckhoffs)."""
    know = getattr(view, "defense", None)
    p = know.params_of("noise") if know is not None else None
    if not p:
        return 0.0, math.inf, 2
    scale, laplace = float(p.get("scale", 0.0)), p.get("distribution", "gaussian") == "laplace"
    return (2 * scale**2 if laplace else scale**2), float(p.get("clip", math.inf)), 1 if laplace else 2


def group_releases(ids: torch.Tensor, steps: torch.Tensor, acts: torch.Tensor, last: int = 0
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Releases grouped by id, each group in step order (its last ``last`` only; 0: all)."""
    order = torch.argsort(steps.double() + 0.0, stable=True)
    ids, acts = ids[order], acts[order]
    out_ids, groups = torch.unique(ids), []
    for i in out_ids:
        g = acts[ids == i]
        groups.append(g[-last:] if last else g)
    return out_ids, groups


def drift_and_noise(groups: list[torch.Tensor], var: float) -> tuple[float, float]:
    """Estimated ‖c_e − c_last‖²/‖c‖² (mean over targets and earlier releases; the releases' noise
    variance removed) and the relative noise variance the average leaves, s²·D/‖c‖², where ‖c‖² is
    the clean energy estimated from the average (‖ā‖² − D·var/E, at least a tenth of ‖ā‖²)."""
    drift, noise = [], []
    for g in groups:
        f = g.flatten(1)
        d, e = f.shape[1], len(g)
        total = float(f.mean(0).pow(2).sum())
        clean = max(total - d * var / e, 0.1 * total, 1e-12)
        noise.append(d * var / e / clean)
        if e > 1:
            diff = (f[:-1] - f[-1]).pow(2).sum(1) - 2 * d * var
            drift.append(float(diff.mean()) / clean)
    return (sum(drift) / len(drift) if drift else 0.0), sum(noise) / max(len(noise), 1)


def choose_releases(groups: list[torch.Tensor], var: float) -> int:
    """How many of the last releases to average (one number for all targets), minimising the estimated
    error of the average against the last client's clean activation: D·var/m (noise) + ‖mean of the
    last m − c_last‖² (drift), the latter estimated as ‖ā_m − r_last‖² − D·var·(m − 1)/m (its noise
    part removed; the noise variance is public). Pooled over targets."""
    most = min(len(g) for g in groups)
    if var <= 0 or most <= 1:
        return 1
    best, best_err = 1, math.inf
    for m in range(1, most + 1):
        err = 0.0
        for g in groups:
            f = g[-m:].flatten(1)
            d = f.shape[1]
            bias = float((f.mean(0) - f[-1]).pow(2).sum()) - d * var * (m - 1) / m
            err += d * var / m + max(bias, 0.0)
        if err < best_err:
            best, best_err = m, err
    return best


def invert_noisy(f1: nn.Module, targets: torch.Tensor, var: torch.Tensor, input_shape: tuple[int, ...], *,
                 clip: float, p: int, iterations: int, lr: float, lambda_tv: float, lambda_noise: float,
                 init: float, relu_slope: float, progress=None) -> torch.Tensor:
    """The MAP-style inversion above, all targets in one Adam. ``var``: the remaining noise variance
    per coordinate, one per target; the prior's weight is λ_TV·(1 + lambda_noise·s²/ĉ²)."""
    f1.eval()
    for q in f1.parameters():
        q.requires_grad_(False)
    a = targets.flatten(1)
    energy = a.pow(2).mean(1)
    clean = (energy - var).clamp_min(0.1 * energy).clamp_min(1e-12)
    weight = 1.0 / (clean + var)
    prior = lambda_tv * (1 + lambda_noise * var / clean)
    x = torch.full((len(a), *input_shape), float(init), device=a.device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    with leaky_relu_gradients(f1, relu_slope):
        for it in range(iterations):
            opt.zero_grad(set_to_none=True)
            fit = (clip_rows(f1(x), clip, p).flatten(1) - a).pow(2).mean(1) * weight
            loss = (fit + prior * total_variation(x)).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            if progress is not None and it % 50 == 0:
                progress(it, iterations)
    return x.detach()


@register_attack
class NoiseAverage(Attack):
    name = "noise-average"
    kind = "inversion"
    BASE = frozenset({Capability.SMASHED, Capability.SAMPLE_IDS, Capability.CLIENT_WEIGHTS})
    requires = BASE  # decoder "network" adds AUX_DATA (each instance sets its own)
    adapts_to = ("noise",)
    paper = ("new here: averaging linked releases (σ/√E) + He et al. ACSAC 2019 white-box rMLE with the "
             "noise model in the fit")

    def __init__(self, tracked: int = 64, releases: int = 0, iterations: int = 300, lr: float = 1e-2,
                 lambda_tv: float = 0.1, lambda_noise: float = 4.0, relu_slope: float = 0.01, init: float = 0.5,
                 decoder: str = "map",
                 n_aux: int = 2000, epochs: int = 10, **rest: Any) -> None:
        super().__init__(**rest)
        self.decoder = check_choice("decoder", decoder, ("map", "network"))
        self.n_aux = check_positive_int("n_aux", n_aux)
        self.epochs = check_positive_int("epochs", epochs)
        self.requires = self.BASE | ({Capability.AUX_DATA} if self.decoder == "network" else set())
        self.tracked = check_positive_int("tracked", tracked)
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 0:
            raise ValueError(f"releases must be an integer >= 0 (0: chosen from the data; n: the last n), "
                             f"got {releases!r}")
        self.releases = releases
        self.iterations = check_positive_int("iterations", iterations)
        self.lr = check_positive_float("lr", lr)
        self.lambda_tv = check_positive_float("lambda_tv", lambda_tv, allow_zero=True)
        self.lambda_noise = check_positive_float("lambda_noise", lambda_noise, allow_zero=True)
        self.relu_slope = check_positive_float("relu_slope", relu_slope, allow_zero=True)
        self.init = check_positive_float("init", init, allow_zero=True)
        if self.init > 1:
            raise ValueError(f"init must lie in [0, 1] (a constant image), got {init!r}")

    def params(self) -> dict[str, Any]:
        out = {"tracked": self.tracked, "releases": self.releases, "decoder": self.decoder}
        if self.decoder == "network":
            return out | {"n_aux": self.n_aux, "epochs": self.epochs}
        return out | {"iterations": self.iterations, "lr": self.lr, "lambda_tv": self.lambda_tv,
                      "lambda_noise": self.lambda_noise, "relu_slope": self.relu_slope, "init": self.init}

    def coverage(self) -> Coverage:
        return Coverage(tracked=self.tracked)

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        view.require(Capability.SAMPLE_IDS)
        tracked = view.observations("tracked")
        obs = [o for o in tracked if o.smashed is not None and len(o.ids)]
        if tracked and not obs:  # he: the activations are rebuilt per recorded batch, not per tracked release
            raise AttackNotApplicable("noise-average: the tracked releases carry no plaintext activations here "
                                      "(under he they are rebuilt only for the recorded batches)")
        if not obs:
            raise RuntimeError("noise-average: the transcript's 'tracked' window is empty (the run did not "
                               "honour the attack's coverage)")
        if view.client_weights is None:
            raise RuntimeError("noise-average needs the client weights; the view did not grant them")
        ids = torch.cat([o.ids for o in obs]).long()
        steps = torch.cat([torch.full((len(o.ids),), o.step) for o in obs])
        var, clip, p = noise_model(view)
        uid, groups = group_releases(ids, steps, torch.cat([o.smashed for o in obs]).float())
        last = self.releases or choose_releases(groups, var)  # no noise known: 1, the freshest (no drift)
        groups = [g[-last:] for g in groups]
        drift, noise_rel = drift_and_noise(groups, var)
        counts = torch.tensor([len(g) for g in groups], dtype=torch.float32)
        mean = torch.stack([g.mean(0) for g in groups])
        dev = view.device
        if self.decoder == "network":  # the informed inverse network, trained on averages of m releases
            g, _ = fit_inverse(view, simulation(view), seeded(generator), tuple(mean.shape[1:]), n_aux=self.n_aux,
                               epochs=self.epochs, lr=1e-3, batch_size=64, hidden=32, releases=last)
            with torch.no_grad():
                rec = g(mean.to(dev))
        else:
            rec = invert_noisy(view.client_weights.to(dev), mean.to(dev), (var / counts).to(dev), view.input_shape,
                               clip=clip, p=p, iterations=self.iterations, lr=self.lr, lambda_tv=self.lambda_tv,
                               lambda_noise=self.lambda_noise, init=self.init, relu_slope=self.relu_slope,
                               progress=report(view))
        return AttackOutput(ids=uid, reconstructions=rec.cpu(),
                            extra={"releases_mean": float(counts.mean()), "noise_var": var,
                                   "drift_rel": drift, "noise_rel": noise_rel})
