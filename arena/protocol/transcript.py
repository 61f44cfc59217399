"""What the server observed during training (Transcript) and the ground truth (Truth).

A transcript keeps the messages of the first and the last ``record_steps`` training steps
(windows "before" and "after" client training): enough for every honest attack, bounded in memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

WINDOWS = ("before", "after", "checkpoints")  # checkpoints: steps a malicious policy asked to record


@dataclass
class Observation:
    """One training step as the server saw it. A field is None when the server did not see it."""

    step: int = -1
    # sample ids; an attack without SAMPLE_IDS sees opaque per-release handles instead (`with_handles`)
    ids: torch.Tensor | None = None
    smashed: torch.Tensor | None = None  # plaintext activations at the cut
    labels: torch.Tensor | None = None  # labels sent in clear (vanilla setup)
    inputs: torch.Tensor | None = None  # raw inputs (label-only setup: the server owns them)
    server_out: torch.Tensor | None = None  # what the server sent to the label owner
    cut_grad: torch.Tensor | None = None  # gradient the label owner returned, per example
    tail_grads: list[dict[str, torch.Tensor]] | None = None  # label owner's parameter gradients per group
    server_grads: dict[str, torch.Tensor] | None = None  # server-part gradients sent to the server (he)
    # the labels the label owner used this step (u-shaped, label-only). Never part of a view (not a
    # message to the server): it lets the runner derive what a vanilla server of the same run was sent
    tail_labels: torch.Tensor | None = None

    def detached(self) -> "Observation":
        def d(t):
            return None if t is None else t.detach().cpu().clone()

        return Observation(
            step=self.step, ids=d(self.ids), smashed=d(self.smashed), labels=d(self.labels),
            inputs=d(self.inputs), server_out=d(self.server_out), cut_grad=d(self.cut_grad),
            tail_grads=None if self.tail_grads is None else
            [{k: d(v) for k, v in g.items()} for g in self.tail_grads],
            server_grads=None if self.server_grads is None else {k: d(v) for k, v in self.server_grads.items()},
            tail_labels=d(self.tail_labels),
        )


@dataclass
class Transcript:
    setup: str
    windows: dict[str, list[Observation]] = field(default_factory=dict)

    def trimmed(self, record_steps: int) -> "Transcript":
        """The transcript a run recording only ``record_steps`` steps at each end would have kept:
        the first of "before", the last of "after" (checkpoints unchanged). One training run serves
        attacks that asked for different numbers of recorded steps."""
        out = Transcript(setup=self.setup, windows=dict(self.windows))
        if "before" in out.windows:
            out.windows["before"] = out.windows["before"][:record_steps]
        if "after" in out.windows:
            out.windows["after"] = out.windows["after"][-record_steps:]
        return out

    def observations(self, window: str = "after") -> list[Observation]:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; use one of {WINDOWS}")
        return self.windows.get(window, [])


def _releases(transcript: Transcript) -> torch.Tensor:
    """Sample id of every release, in one fixed order (windows as stored, then observation order)."""
    ids = [o.ids for obs in transcript.windows.values() for o in obs if o.ids is not None]
    return torch.cat(ids).long() if ids else torch.zeros(0, dtype=torch.long)


def with_handles(transcript: Transcript) -> Transcript:
    """The transcript as a server without SAMPLE_IDS sees it: each release's sample id replaced by an
    opaque handle -1, -2, ... (one per release, so two releases of one example cannot be linked; negative,
    so a handle is never mistaken for a sample id). Only `resolve` maps them back."""
    out, k = Transcript(setup=transcript.setup), 0
    for w, obs in transcript.windows.items():
        out.windows[w] = []
        for o in obs:
            if o.ids is not None:
                o = dataclasses.replace(o, ids=-1 - torch.arange(k, k + len(o.ids)))
                k += len(o.ids)
            out.windows[w].append(o)
    return out


def resolve(ids: torch.Tensor, transcript: Transcript) -> torch.Tensor:
    """Sample ids for ids an attack returned: handles (< 0) mapped back through the transcript."""
    ids = torch.as_tensor(ids).long()
    handles = ids < 0
    if not bool(handles.any()):
        return ids
    releases = _releases(transcript)
    k = -1 - ids[handles]
    if int(k.max()) >= len(releases):
        raise ValueError(f"handle {int(ids.min())} does not name any release in the transcript")
    out = ids.clone()
    out[handles] = releases[k]
    return out


@dataclass
class Truth:
    """Private inputs and labels by sample id. Only arena.scoring reads this."""

    x: dict[int, torch.Tensor] = field(default_factory=dict)
    y: dict[int, int] = field(default_factory=dict)

    def add(self, ids: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        for i, xi, yi in zip(ids.tolist(), x, y.tolist()):
            self.x[i] = xi.detach().cpu().clone()
            self.y[i] = int(yi)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.x[int(i)] for i in ids])

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.y[int(i)] for i in ids], dtype=torch.long)
