"""ServerView: everything an attacker may see, nothing else.

Least privilege: a view holds only the capabilities the attack declared it requires (and that the
setup grants and the defense did not remove). It never holds the client's trained parameters or
private tensors unless the attack declared CLIENT_WEIGHTS (a white-box threat model) and the
defense allows it. Architectures are given as builders of *freshly initialised* modules.

Query access (QUERY) is a `ClientQuery`: on the CPU the defended client answers from a forked child
process, so nothing reachable from the view (attributes, closures) holds the client's weights; the
attack gets what the client would send, its defense's test-time transform included. On a GPU
(CUDA cannot be forked) the client answers in-process behind the same interface.
"""
from __future__ import annotations

import copy
import os
import signal
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Callable

import torch
from torch import nn

from ..records import Capability
from .knowledge import DefenseKnowledge
from .transcript import WINDOWS, Observation, Transcript

_FIELD_CAPS = {
    "smashed": Capability.SMASHED,
    "labels": Capability.LABELS,
    "inputs": Capability.INPUTS,
    "cut_grad": Capability.CUT_GRADIENT,
    "tail_grads": Capability.TAIL_GRADIENTS,
    "server_out": Capability.SERVER_OUT,
    "server_grads": Capability.CUT_GRADIENT,  # they come with the cut gradient (he: dL/dW sent in clear)
}


class CapabilityError(PermissionError):
    """An attack asked its view for something its threat model does not grant."""


def _serve(conn: Connection, answer: Callable[[torch.Tensor], torch.Tensor]) -> None:
    # numpy arrays, not tensors, cross the pipe: torch's own pickling of tensors between processes
    # passes shared-memory handles through a helper thread that a forked child does not have
    while True:
        try:
            x = torch.from_numpy(conn.recv())
        except (EOFError, OSError):
            return
        try:
            conn.send(answer(x).numpy())
        except Exception as e:  # noqa: BLE001 - the asking side raises it
            conn.send(f"the client could not answer the query: {type(e).__name__}: {e}")


def _stop(conn: Connection, pid: int | None) -> None:
    conn.close()
    if pid is not None:  # kill, don't wait for EOF: a later fork may hold a copy of this pipe's end
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class ClientQuery:
    """Black-box access to the defended client: a batch of inputs in, what the client sends out."""

    __slots__ = ("_conn", "_local", "_finalizer", "__weakref__")

    def __init__(self, answer: Callable[[torch.Tensor], torch.Tensor], isolate: bool = True) -> None:
        self._local, self._finalizer = None, None
        if not isolate:  # GPU: no fork; the same interface, in-process (isolation by convention only)
            self._local, self._conn = answer, None
            return
        mine, theirs = Pipe()
        pid = os.fork()
        if pid == 0:  # the child answers queries until the asking side closes its end
            try:
                mine.close()
                torch.set_num_threads(1)  # OpenMP's pool does not survive fork (as in DataLoader workers)
                _serve(theirs, answer)
            finally:
                os._exit(0)
        theirs.close()
        self._conn = mine
        self._finalizer = weakref.finalize(self, _stop, mine, pid)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._local is not None:
            return self._local(x).to(x.device)
        self._conn.send(x.detach().cpu().numpy())
        out = self._conn.recv()
        if isinstance(out, str):
            raise RuntimeError(out)
        return torch.from_numpy(out).to(x.device)

    def close(self) -> None:
        """Stop the child now (the runner does after each cell) rather than when this is collected."""
        if self._conn is not None:
            self._finalizer()

    def __deepcopy__(self, memo: dict) -> "ClientQuery":
        return self  # one client, one oracle

    def __reduce__(self):
        raise TypeError("a ClientQuery cannot be pickled: it is a live connection to the client")


@dataclass(frozen=True)
class ServerView:
    setup: str
    capabilities: frozenset[Capability]
    input_shape: tuple[int, int, int]
    num_classes: int
    client_depth: int
    label_layers: int
    client_arch: Callable[[], nn.Sequential]  # a fresh, randomly initialised client part
    tail_arch: Callable[[], nn.Sequential]  # a fresh label-owner tail (empty in vanilla)
    server_part: nn.Sequential  # the server's own layers after training (its own, so it has them)
    server_part_before: nn.Sequential  # the same at the first recorded step
    windows: dict[str, tuple[Observation, ...]] = field(default_factory=dict)
    aux: tuple[torch.Tensor, torch.Tensor] | None = None
    query: ClientQuery | None = None
    client_weights: nn.Sequential | None = None
    device: str = "cpu"
    # TRAIN_DATA: (x, y) of the private training set minus every sample observed in the transcript
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None
    # KNOWN_LABELS: per window, (ids, labels) of the first n observed samples of each class (n: the attack's known_per_class)
    known_labels: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    # Long attacks may report (done, total) steps here; the matrix shows a bar with time left.
    progress: Callable[[int, int], None] | None = None
    # Kerckhoffs: the defense's (or stack's) names and public parameters, never its randomness
    defense: DefenseKnowledge = field(default_factory=DefenseKnowledge)
    # capabilities this view rebuilt from what the server saw instead of receiving them (-> how)
    derived: dict[str, str] = field(default_factory=dict)

    def report_progress(self, done: int, total: int) -> None:
        """Tell the progress bar how far a long attack is (no-op outside the matrix)."""
        if self.progress is not None:
            self.progress(done, total)

    def has(self, cap: Capability) -> bool:
        return cap in self.capabilities

    def require(self, cap: Capability) -> None:
        if cap not in self.capabilities:
            raise CapabilityError(f"this view does not grant {cap.value!r}; declare it in the attack's requires")

    def observations(self, window: str = "after") -> tuple[Observation, ...]:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; use one of {WINDOWS}")
        return self.windows.get(window, ())

    def stacked(self, name: str, window: str = "after") -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate one observed field over a window: returns (ids, tensor)."""
        cap = _FIELD_CAPS.get(name)
        if cap is not None:
            self.require(cap)
        obs = [o for o in self.observations(window) if getattr(o, name) is not None]
        if not obs:
            raise CapabilityError(f"no {name!r} observed in window {window!r} of setup {self.setup!r}")
        return torch.cat([o.ids for o in obs]), torch.cat([getattr(o, name) for o in obs])


def _filter(o: Observation, granted: frozenset[Capability]) -> Observation:
    keep = {f: (getattr(o, f) if c in granted else None) for f, c in _FIELD_CAPS.items()}
    return Observation(step=o.step, ids=o.ids, **keep)


def build_view(*, setup: str, granted: frozenset[Capability], transcript: Transcript,
               input_shape: tuple[int, int, int], num_classes: int, client_depth: int, label_layers: int,
               client_arch: Callable[[], nn.Sequential], tail_arch: Callable[[], nn.Sequential],
               server_part: nn.Module, server_part_before: nn.Module,
               aux: tuple[torch.Tensor, torch.Tensor] | None, trained_client: nn.Module,
               device: str = "cpu", train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
               known_labels: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
               query_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
               defense: DefenseKnowledge | None = None, derived: dict[str, str] | None = None) -> ServerView:
    """The scorer-side constructor: copies what the attack may see and drops everything else."""
    white_box = Capability.CLIENT_WEIGHTS in granted
    client = None
    if white_box or Capability.QUERY in granted:
        client = copy.deepcopy(trained_client).eval()
        for p in client.parameters():
            p.requires_grad_(False)
    query = None
    if Capability.QUERY in granted:
        query = ClientQuery(_answerer(copy.deepcopy(client), query_transform),
                            isolate=not str(device).startswith("cuda"))
    return ServerView(
        setup=setup, capabilities=granted, input_shape=tuple(input_shape), num_classes=num_classes,
        client_depth=client_depth, label_layers=label_layers, client_arch=client_arch, tail_arch=tail_arch,
        server_part=copy.deepcopy(server_part), server_part_before=copy.deepcopy(server_part_before),
        windows={w: tuple(_filter(o, granted) for o in transcript.observations(w)) for w in WINDOWS},
        aux=aux if Capability.AUX_DATA in granted else None,
        query=query,
        client_weights=client if white_box else None,
        device=device,
        train_data=train_data if Capability.TRAIN_DATA in granted else None,
        known_labels=known_labels if Capability.KNOWN_LABELS in granted else None,
        defense=defense or DefenseKnowledge(), derived=dict(derived or {}),
    )


def _answerer(client: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    def answer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = client(x.to(next(client.parameters()).device))
            # a query gets what the client really sends: its defense's transform (e.g. noise) included
            return (transform(out) if transform is not None else out).detach().cpu()

    return answer
