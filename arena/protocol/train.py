"""Split training for the three setups of the UnSplit paper's Figure 1, with defense hooks.

`SplitSetup` is the (possibly defended) protocol (it and the other types live in `protocol.setup`,
re-exported here); `train()` runs it and returns the trained split
model, the test accuracy (the cell's utility), the costs, and a `Transcript` of what the server
observed in the first and the last recorded steps. Only `arena.scoring` ever sees `Truth`.

Defenses change the protocol only through the hooks of `SplitSetup` (they return a new setup):
``smash_hooks`` (client transforms its activations before sending: noise),
``client_loss_terms`` (extra client-side loss: NoPeek), ``cut_grad_hooks`` (label owner transforms
the gradient it returns), ``wrap_client`` (DP-SGD replaces the client's optimiser/loader),
``channel`` (the wire: plain or encrypted), ``label_batch`` (how many examples the label owner
aggregates before its parameter gradients can be observed), ``inference_hooks`` (what the client
does to its activations at test time: by default exactly what it sends during training, so the
cell's test accuracy is the deployed pipeline's), ``derivable`` (quantities not sent in plaintext
that the server can still rebuild from what it sees: not granted, not removed either),
``label_transform`` (the label owner changes its training labels once, before training: label-dp's
randomized response; the truth the scorer holds and the test labels stay the true ones),
``label_loss_terms`` (extra label-owner loss, one batch-mean scalar from its tail and its input h:
mid's KL term; its gradient reaches the cut gradient and the observed tail gradients too).

A defense may also give the label owner more layers by returning a setup whose model has them in
front of the tail and whose ``scenario.label_layers`` counts them (mid's bottleneck; he moves the
cut the same way). A tail layer that draws random numbers declares a ``noise_generator`` attribute
and draws only while it holds one: `train()` hands it a stream derived from the training generator
("tail-noise") for training, another ("test-tail-noise") for the test-accuracy evaluation (the
deployed label owner draws too), and None after, so the trained model and a fresh copy in the view
(``tail_arch``) are deterministic. The per-example tail gradients recorded for the transcript are
recomputed with draws from a separate stream ("tail-noise-observed/<step>"), so recording more
steps never changes training; they are taken at another draw of that noise than the step's own
(the same distribution; the server never sees it). A tail layer with a float ``lr`` attribute
trains at that rate in the label owner's Adam (mid's bottleneck: VFLAIR's own MID learning rate).

Randomness: the data order comes from the training generator; the defense's draws (noise on the
activations or on returned gradients) from a generator derived from it under another name, and
the test-time draws from a third; the label transform and stochastic tail layers have their own.
A defense therefore never shifts the data order, so a defended run and the undefended run of the
same scenario see the same batches (a paired comparison).
"""
from __future__ import annotations

import collections
import copy
import math
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .cost import Stopwatch, flops_per_sample
from ..records import TrainConfig
from ..seeding import derive_seed
from .setup import (GRANTABLE_EXTRAS, SETUP_CAPABILITIES, ClientMonitor, Data, GradHook, LabelTransform,  # noqa: F401
                    LossTerm, ServerPolicy, SmashHook, SplitSetup, TailLossTerm, TrainResult, make_setup)
from .split import SplitModel, split
from .transcript import Observation, Transcript, Truth


def _loader(data: Data, cfg: TrainConfig, gen: torch.Generator):
    ds = torch.utils.data.TensorDataset(torch.arange(len(data.x_train)))
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen)


def _adam(params: Iterable[torch.Tensor], lr: float, amsgrad: bool = True) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a handful per tensor (LeNet training 5-8% faster on a CPU core,
    # measured in one run; the same Adam up to rounding)
    return torch.optim.Adam(list(params), lr=lr, amsgrad=amsgrad, fused=True)


def _tail_adam(tail: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The label owner's Adam; a tail layer with an ``lr`` attribute (mid's bottleneck) gets that rate."""
    own = [m for m in tail.modules() if isinstance(getattr(m, "lr", None), float)]
    if not own:
        return _adam(tail.parameters(), cfg.lr, cfg.amsgrad)
    mine = {id(p) for m in own for p in m.parameters()}
    groups = [{"params": [p for p in tail.parameters() if id(p) not in mine]}]
    groups += [{"params": list(m.parameters()), "lr": m.lr} for m in own]
    return torch.optim.Adam(groups, lr=cfg.lr, amsgrad=cfg.amsgrad, fused=True)


def derived_generator(gen: torch.Generator, name: str) -> torch.Generator:
    """An independent stream named ``name``, seeded from ``gen``'s seed (``gen`` is not advanced)."""
    g = torch.Generator(device=gen.device)
    g.manual_seed(derive_seed(gen.initial_seed(), name))
    return g


def total_steps(n_train: int, cfg: TrainConfig) -> int:
    steps = math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def train(setup: SplitSetup, data: Data, gen: torch.Generator, device: str = "cpu",
          policy: ServerPolicy | None = None, progress: Callable[[int, int], None] | None = None
          ) -> TrainResult:
    """Run split training; returns the trained model, transcript, truth, utility and costs.

    ``gen`` draws the data order only; the defense's draws come from a stream derived from it."""
    sc, cfg = setup.scenario, setup.config
    defense_gen = derived_generator(gen, "defense")
    # train a copy: the setup (and its initial weights) stays as it was
    sm = split(copy.deepcopy(setup.model), setup.depth, setup.label_layers).to(device)
    owner = sc.setup  # who holds what
    client_opt = _adam(sm.client.parameters(), cfg.lr, cfg.amsgrad)
    server_opt = _adam(sm.server.parameters(), cfg.lr, cfg.amsgrad) if len(list(sm.server.parameters())) else None
    tail_opt = _tail_adam(sm.tail, cfg) if len(sm.tail) else None
    loader = _loader(data, cfg, gen)
    client = sm.client
    if setup.wrap_client is not None:
        client, client_opt, loader = setup.wrap_client(client, client_opt, loader, len(data.x_train))
    steps = total_steps(len(data.x_train), cfg)
    rec = min(cfg.record_steps, steps)
    record_at = {s: "before" for s in range(rec)} | {s: "after" for s in range(steps - rec, steps)}
    # a malicious policy may ask for observations at checkpoints (FSHA's reconstruction curve)
    record_at = {s: "checkpoints" for s in getattr(policy, "record_steps", ()) if 0 <= s < steps} | record_at
    monitor, recent, stopped = setup.client_monitor, collections.deque(maxlen=rec), False
    # who may end training early: the client's monitor (detection) or the server's policy (its budget)
    stoppers = tuple(w for w in (monitor, policy) if w is not None and hasattr(w, "stop"))
    shown = min(steps, getattr(policy, "total_steps", None) or steps)  # progress: a policy's budget is its end
    tracked = _tracked_examples(len(data.x_train), cfg.track, gen)
    transcript, truth = Transcript(setup=owner, tracked=tuple(tracked.tolist())), Truth()
    watch = Stopwatch()
    server_before: nn.Module | None = None
    tail_before: nn.Module | None = None
    y_train = data.y_train
    if setup.label_transform is not None:  # once, before training (never per epoch); the truth keeps data.y_train
        y_train = setup.label_transform(data.y_train, data.num_classes, derived_generator(gen, "labels"))
        if y_train.shape != data.y_train.shape or y_train.dtype != data.y_train.dtype:
            raise ValueError("label_transform must return labels of the shape and dtype it was given")
    x_dev, y_dev = data.x_train.to(device), y_train.to(device)
    noisy = stochastic_layers(sm.tail)
    _hand_noise(noisy, gen, "tail-noise")
    step = 0
    while step < steps and not stopped:
        for (idx,) in loader:
            if step >= steps:
                break
            if len(idx) == 0:  # Poisson sampling (DP-SGD) may draw an empty batch
                continue
            x, y = x_dev[idx], y_dev[idx]
            window = record_at.get(step)
            if window == "before" and server_before is None:
                server_before, tail_before = copy.deepcopy(sm.server), copy.deepcopy(sm.tail)
            obs = _step(setup, sm, client, x, y, defense_gen, watch, policy, step, window is not None)
            for opt in (client_opt, server_opt, tail_opt):
                if opt is not None:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            if stoppers:  # the last steps become the "after" window if training is stopped early
                recent.append((step, idx.clone(), obs.detached()))
            obs.ids, obs.step = idx.clone(), step
            if window is not None:
                transcript.windows.setdefault(window, []).append(obs.detached())
                truth.add(idx, data.x_train[idx], data.y_train[idx])
            seen = torch.isin(idx, tracked) if len(tracked) else None
            if seen is not None and bool(seen.any()):  # every release of the tracked examples
                transcript.windows.setdefault("tracked", []).append(obs.rows(seen.to(idx.device)).detached())
                truth.add(idx[seen], data.x_train[idx[seen]], data.y_train[idx[seen]])
            step += 1
            if progress is not None:
                progress(step, shown)
            if any(w.stop for w in stoppers):
                stopped = True
                break
    if stopped:
        transcript.windows["after"] = []
        for s, idx, o in recent:
            o.ids, o.step = idx, s
            transcript.windows["after"].append(o)
            truth.add(idx, data.x_train[idx], data.y_train[idx])
    scores: list[torch.Tensor] | None = [] if data.num_classes == 2 else None
    _hand_noise(noisy, gen, "test-tail-noise")
    test_acc = evaluate(sm, data.x_test, data.y_test, device,
                        transform=deployed_transform(setup.test_hooks(), derived_generator(gen, "test")),
                        positive_scores=scores)
    _hand_noise(noisy, gen, None)  # the trained model is deterministic
    cost = _costs(setup, sm, data, watch, step)  # steps run (fewer if a monitor or the policy stopped training)
    return TrainResult(sm, transcript, truth, test_acc, cost, server_before or copy.deepcopy(sm.server),
                       tail_before if tail_before is not None else copy.deepcopy(sm.tail),
                       torch.cat(scores) if scores else None)


def _step(setup: SplitSetup, sm: SplitModel, client: nn.Module, x: torch.Tensor, y: torch.Tensor,
          gen: torch.Generator, watch: Stopwatch, policy: ServerPolicy | None, step: int,
          record: bool) -> Observation:
    """One forward/backward pass through all parties; returns what the server observed."""
    kind = setup.scenario.setup
    obs = Observation()
    fake = False
    if setup.client_monitor is not None and kind != "label-only":
        y, fake = setup.client_monitor.labels(y, step)
    if kind == "label-only":
        # The server owns inputs and every layer before the label owner's tail.
        with watch.time("server"):
            h = sm.server(sm.client(x))
        g_h, loss = _label_owner(setup, sm, h, y, gen, watch, obs, record, step)
        with watch.time("server"):
            h.backward(g_h)
        obs.inputs = x
        return obs
    with watch.time("client"):
        a = client(x)
        for hook in setup.smash_hooks:
            a = hook(a, gen)
    msg = a.detach().requires_grad_(True)
    obs.smashed = setup.channel.observed(msg)
    if policy is not None:
        with watch.time("server"):
            g = policy.step(msg, y if kind == "vanilla" else None, step)
    else:
        with watch.time("server"):
            h = setup.channel.server_forward(msg, sm.server)
        if kind == "vanilla":
            with watch.time("server"):
                F.cross_entropy(h, y).backward()
            obs.labels = y
        else:
            g_h, _ = _label_owner(setup, sm, h.detach().requires_grad_(True), y, gen, watch, obs, record, step)
            with watch.time("server"):
                h.backward(g_h)
            obs.server_out = setup.channel.observed_output(obs.server_out)  # None when it was encrypted
            if record:
                obs.server_grads = setup.channel.observed_server_grads(sm.server)
        g = msg.grad
    with watch.time("client"):
        total = (a * g).sum()
        for term in setup.client_loss_terms:
            total = total + term(x, a)
        with warnings.catch_warnings():
            # dp-sgd's per-sample gradients (Opacus) are full backward hooks on the client's layers; the
            # first one's input is the data, which never requires a gradient, so PyTorch warns that the hook
            # fires with respect to the layer's outputs: exactly what per-sample gradients use. Understood.
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed "
                                    "with respect to module outputs")
            total.backward()
        if setup.client_monitor is not None:
            setup.client_monitor.observe(step, g, client, fake)
            if fake:  # SplitGuard: a fake batch never updates the client
                client.zero_grad(set_to_none=True)
    return obs


def _label_owner(setup: SplitSetup, sm: SplitModel, h: torch.Tensor, y: torch.Tensor,
                 gen: torch.Generator, watch: Stopwatch, obs: Observation, record: bool, step: int = 0):
    """The label owner runs its tail, computes the loss and returns the gradient at its input."""
    h_in = h.detach().requires_grad_(True)
    with watch.time("label_owner"):  # the client's time too (`_costs`); kept apart for `derive.as_vanilla`
        loss = F.cross_entropy(sm.tail(h_in), y)
        for term in setup.label_loss_terms:
            loss = loss + term(sm.tail, h_in)
        loss.backward()
        g = h_in.grad
        for hook in setup.cut_grad_hooks:
            g = hook(g, y, gen)
    obs.server_out = h_in.detach()
    obs.cut_grad = g.detach()
    obs.tail_labels = y
    if record:
        noisy = stochastic_layers(sm.tail)
        kept = _hand_noise(noisy, gen, f"tail-noise-observed/{step}")  # never advances the training stream
        obs.tail_grads = tail_gradients(sm.tail, h_in.detach(), y, setup.label_batch, setup.label_loss_terms)
        for m, k in zip(noisy, kept):
            m.noise_generator = k
    return g, loss


def _tracked_examples(n: int, track: int, gen: torch.Generator) -> torch.Tensor:
    """The sample ids whose every release is recorded (window "tracked"): ``track`` of the ``n`` training
    examples, drawn from a stream derived from the data-order generator (so the same for every defense
    of a scenario) without advancing it."""
    if track <= 0:
        return torch.zeros(0, dtype=torch.long)
    perm = torch.randperm(n, generator=derived_generator(gen, "tracked"))
    return perm[:min(track, n)].clone()


def stochastic_layers(tail: nn.Module) -> list[nn.Module]:
    """The label owner's layers that draw noise from a ``noise_generator`` (mid's bottleneck)."""
    return [m for m in tail.modules() if hasattr(m, "noise_generator")]


def _hand_noise(layers: list[nn.Module], gen: torch.Generator, name: str | None) -> list[Any]:
    """Give ``layers`` one stream derived from ``gen`` under ``name`` (None: no noise); returns what they held."""
    kept = [m.noise_generator for m in layers]
    g = derived_generator(gen, name) if layers and name is not None else None
    for m in layers:
        m.noise_generator = g
    return kept


def tail_gradients(tail: nn.Module, h: torch.Tensor, y: torch.Tensor, group: int,
                   terms: tuple[TailLossTerm, ...] = ()) -> list[dict[str, torch.Tensor]]:
    """Parameter gradients of the label owner's tail, one per group of ``group`` examples.

    With group 1 these are per-example gradients: what UnSplit's label attack assumes a server
    observes (SGD with batch size 1). The `batching` defense raises the group size. ``terms``: the
    label owner's extra loss terms (`SplitSetup.label_loss_terms`), so the gradients are its full loss's.
    """
    out = []
    params = dict(tail.named_parameters())
    for s in range(0, len(y), group):
        loss = F.cross_entropy(torch.func.functional_call(tail, params, (h[s:s + group],)), y[s:s + group])
        for term in terms:  # the terms use the tail's own parameters: the same tensors as ``params``
            loss = loss + term(tail, h[s:s + group])
        grads = torch.autograd.grad(loss, list(params.values()))
        out.append({k: g.detach().clone() for k, g in zip(params, grads)})
    return out


def deployed_transform(hooks: tuple[SmashHook, ...], gen: torch.Generator
                       ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The client's activation transform at inference (None: it sends its activations as they are)."""
    if not hooks:
        return None

    def transform(a: torch.Tensor) -> torch.Tensor:
        for hook in hooks:
            a = hook(a, gen)
        return a

    return transform


@torch.no_grad()
def evaluate(sm: SplitModel | nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu",
             batch: int = 1000, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
             positive_scores: list[torch.Tensor] | None = None) -> float:
    """Test accuracy of a split model (or any module) on (x, y). ``transform``: what the client does
    to its activations before sending them (a defense's test-time behaviour), split models only.
    ``positive_scores``: a list that receives, batch by batch, the predicted probability of class 1
    (binary tasks: the scores of the model's test AUC, which accuracy alone hides at 10% positives)."""
    if transform is not None and isinstance(sm, SplitModel):
        def fwd(v: torch.Tensor) -> torch.Tensor:
            return sm.tail(sm.server(transform(sm.client(v))))
    else:
        fwd = sm.forward if isinstance(sm, SplitModel) else sm
    mods = sm.modules() if isinstance(sm, SplitModel) else [sm]
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    correct = 0
    for s in range(0, len(x), batch):
        logits = fwd(x[s:s + batch].to(device))
        pred = logits.argmax(1)
        correct += int((pred == y[s:s + batch].to(device)).sum())
        if positive_scores is not None:
            positive_scores.append(logits.float().softmax(1)[:, 1].cpu())
    for m, t in zip(mods, modes):
        m.train(t)
    return correct / max(len(x), 1)


def _costs(setup: SplitSetup, sm: SplitModel, data: Data, watch: Stopwatch, steps: int) -> dict[str, Any]:
    shape = data.shape
    with torch.no_grad():
        p = next(sm.client.parameters())
        act = sm.client(torch.zeros(1, *shape, device=p.device))
    n_seen = steps * setup.config.batch_size
    wire = setup.channel.bytes_per_sample(act[0])
    client_s = watch.seconds.get("client", 0.0) + watch.seconds.get("label_owner", 0.0)
    return {
        "client_flops": flops_per_sample(sm.client, shape) + (
            flops_per_sample(sm.tail, tuple(sm.server(act).shape[1:])) if len(sm.tail) else 0),
        "client_s": round(client_s, 4),
        "label_owner_s": round(watch.seconds.get("label_owner", 0.0), 4),  # part of client_s
        "server_s": round(watch.seconds.get("server", 0.0), 4),
        "client_s_per_sample": client_s / max(n_seen, 1),
        "bytes_per_sample": wire,
        "train_steps": steps,
        "n_train": len(data.x_train),  # with train_steps and the batch size: the privacy accountants' input
        "depth": setup.depth,
    }
