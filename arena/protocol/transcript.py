"""What the server observed during training (Transcript) and the ground truth (Truth).

Coverage, designed once: an attack declares what it needs observed (`Coverage`, `Attack.coverage`),
the run records the union of what the attacks of its group declared, and each attack sees what its
own declaration would have kept (`Transcript.trimmed`); its cell records that (`Transcript.coverage`).
Memory stays bounded by the declarations, never by the length of training:

- windows "before" and "after": every message of the first and the last ``steps`` training steps
  (``TrainConfig.record_steps``), enough for the inversion attacks (one batch) and the label attacks
  (a few hundred examples) and a stream for distribution matching (FORA);
- window "tracked": *every release* of ``tracked`` fixed training examples (``TrainConfig.track``; the
  same examples for every defense of a scenario), one observation per step in which any of them was
  sent, holding only their rows of the per-example messages (smashed data, labels, inputs, server
  output, cut gradient; never the batch-level tail or server gradients). Releases of one example are
  linkable only by an attacker granted SAMPLE_IDS; others see one opaque handle per release;
- window "checkpoints": steps a malicious policy asked for (FSHA's reconstruction curve).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

WINDOWS = ("before", "after", "checkpoints", "tracked")
# the per-example fields of an Observation (a "tracked" observation keeps these, row-subset)
PER_EXAMPLE = ("ids", "smashed", "labels", "inputs", "server_out", "cut_grad", "tail_labels")


@dataclass(frozen=True)
class Coverage:
    """What an attack needs observed. ``steps``: training steps kept at each end (windows "before" and
    "after"; None: the experiment's ``record_steps``); ``tracked``: examples whose every release is kept
    (window "tracked"; 0: none)."""

    steps: int | None = None
    tracked: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"Coverage.steps must be None or an integer >= 1, got {self.steps!r}")
        if not isinstance(self.tracked, int) or self.tracked < 0:
            raise ValueError(f"Coverage.tracked must be an integer >= 0, got {self.tracked!r}")


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

    def rows(self, keep: torch.Tensor) -> "Observation":
        """The observation of only the rows ``keep`` (a bool mask over the batch): per-example fields."""
        def sub(t):
            return None if t is None else t[keep.to(t.device)]

        return Observation(step=self.step, **{f: sub(getattr(self, f)) for f in PER_EXAMPLE})

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
    tracked: tuple[int, ...] = ()  # the tracked examples' sample ids, in order (never part of a view)

    def trimmed(self, record_steps: int, track: int = 0) -> "Transcript":
        """The transcript a run recording only ``record_steps`` steps at each end and tracking the first
        ``track`` tracked examples would have kept: the first of "before", the last of "after", the
        releases of those examples (checkpoints unchanged). One training run serves attacks that
        declared different coverage."""
        out = Transcript(setup=self.setup, windows=dict(self.windows), tracked=self.tracked[:track])
        if "before" in out.windows:
            out.windows["before"] = out.windows["before"][:record_steps]
        if "after" in out.windows:
            out.windows["after"] = out.windows["after"][-record_steps:]
        if "tracked" in out.windows:
            if track >= len(self.tracked):
                pass
            elif track == 0:
                del out.windows["tracked"]
            else:
                mine = torch.tensor(out.tracked, dtype=torch.long)
                kept = [o.rows(torch.isin(o.ids, mine)) for o in out.windows["tracked"]]
                out.windows["tracked"] = [o for o in kept if len(o.ids)]
        return out

    def coverage(self) -> dict[str, int]:
        """What this transcript holds, for the cell: steps per window, and the tracked examples and their
        releases."""
        out = {w: len(obs) for w, obs in self.windows.items() if w != "tracked"}
        if self.tracked:
            out["tracked_examples"] = len(self.tracked)
            out["tracked_releases"] = sum(len(o.ids) for o in self.windows.get("tracked", []))
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
    out, k = Transcript(setup=transcript.setup, tracked=transcript.tracked), 0
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
