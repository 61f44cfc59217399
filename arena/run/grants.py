"""What an attack is granted and the view it gets: the capabilities its threat model declares, as far as
the defended protocol hands them over and the experiment does not deny them; why a cell cannot run
(blocked, not applicable, not evaluated, denied), decided up front from declarations only; and the
`ServerView` built from a finished run, with opaque per-release handles unless SAMPLE_IDS is granted.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..attacks import Attack
from ..defenses import Defense
from ..protocol.split import SplitModel
from ..protocol.train import Data, TrainResult, deployed_transform
from ..protocol.knowledge import knowledge_of
from ..protocol.leak import derivation_unavailable, with_derived_smashed
from ..protocol.transcript import Transcript, resolve, with_handles
from ..protocol.view import build_view
from ..records import DENIED, NOT_APPLICABLE, NOT_EVALUATED, Capability, Scenario
from ..seeding import torch_generator


def capability_names(caps) -> list[str]:
    return sorted(c.value for c in caps)


def granted_capabilities(attack: Attack, setup, deny: tuple[str, ...] = ()) -> frozenset[Capability]:
    """What the attack is given: what it declared, as far as the defended protocol hands it over (or
    the server rebuilds it: `rebuilt`) and the experiment's threat model allows; the architecture always."""
    denied = {Capability(d) for d in deny}
    return frozenset((attack.requires & (setup.capabilities() | rebuilt(attack, setup))) - denied) \
        | {Capability.ARCHITECTURE}


def rebuilt(attack: Attack, setup) -> frozenset[Capability]:
    """What the attack needs that the defended protocol does not send but the server rebuilds from what
    it does send (`SplitSetup.derivable`) by a derivation arena implements: SMASHED from the cut gradient
    and the server layer's weight gradient (`protocol.leak`, he with a trained server layer)."""
    if Capability.SMASHED in attack.requires & setup.derived() and rebuild_unavailable(attack, setup) is None:
        return frozenset({Capability.SMASHED})
    return frozenset()


def rebuild_unavailable(attack: Attack, setup) -> str | None:
    """Why the view cannot rebuild SMASHED for this attack (None: it can)."""
    if getattr(attack, "malicious", False):  # its own run: the server layer is not trained honestly
        return ("a hijacking server needs the activations during training and trains no honest server layer "
                "whose dL/dW would give them back")
    return derivation_unavailable(setup.split().server)


def blocked_reason(sc: Scenario, deny: tuple[str, ...], attack: Attack, defense: Defense, defended,
                   num_classes: int) -> str | None:
    """Why a cell cannot run (None: it runs). Decided up front, from declarations only."""
    why = defense.not_applicable(sc.setup, num_classes)
    if why is not None:
        return f"{NOT_APPLICABLE}{why}; {attack.name} runs in {sc.setup} ({num_classes} classes)"
    denied = attack.requires & {Capability(d) for d in deny}
    if denied:
        return (f"{DENIED}{attack.name} requires {', '.join(capability_names(denied))}, "
                "which the experiment denies")
    missing = attack.requires - defended.capabilities() - rebuilt(attack, defended)
    if not missing:
        return None
    derived = dict(defended.derivable)
    removed = (missing & defended.removes) - derived.keys()  # rebuildable is never credited as removed
    if removed:
        return (f"{attack.name} requires {', '.join(capability_names(removed))}, "
                f"which defense {defense.name} removes")
    rebuilt_here = [c for c in missing if c in derived]
    if rebuilt_here:
        return (f"{NOT_EVALUATED}{attack.name} requires {', '.join(capability_names(rebuilt_here))}, which defense "
                f"{defense.name} does not send in plaintext but does not remove either: "
                f"{'; '.join(derived[c] for c in rebuilt_here)}; arena does not rebuild it here: "
                f"{rebuild_unavailable(attack, defended)}")
    return (f"{attack.name} requires {', '.join(capability_names(missing))}, "
            f"which setup {defended.scenario.setup} does not grant")


def make_view(attack: Attack, setup, result: TrainResult | None, data: Data, device: str,
              arch_only: bool = False, deny: tuple[str, ...] = (), defense: Defense | None = None):
    """Grant exactly what the attack requires (and the defended setup allows, and the threat model
    does not deny). Unless SAMPLE_IDS is granted, observations carry opaque per-release handles
    (`protocol.transcript.with_handles`), which only the scorer maps back.

    With ``arch_only`` returns just a builder of fresh client parts (for a malicious policy,
    which acts before there is any trained model)."""
    granted = granted_capabilities(attack, setup, deny)
    template = setup.split()  # architecture only: the builders below re-initialise every parameter

    def fresh(part: torch.nn.Sequential) -> Callable[[], torch.nn.Sequential]:
        # The builder must not even close over trained weights: keep a re-initialised copy only.
        proto = _reinitialised(part)

        def build() -> torch.nn.Sequential:
            return _reinitialised(proto)

        return build

    if arch_only:
        return fresh(template.client)
    assert result is not None
    sm: SplitModel = result.model
    transcript = result.transcript if Capability.SAMPLE_IDS in granted else with_handles(result.transcript)
    derived: dict[str, str] = {}
    if Capability.SMASHED in granted & rebuilt(attack, setup):
        with torch.no_grad():  # the client's output shape, from the architecture alone
            shape = tuple(copy.deepcopy(template.client).eval()(torch.zeros(1, *data.shape)).shape[1:])
        windows, info = with_derived_smashed(transcript.windows, sm.server, shape)
        transcript = Transcript(setup=transcript.setup, windows=windows, tracked=transcript.tracked)
        derived["smashed"] = (f"least squares from the cut gradient g_h and the server layer's weight gradient "
                              f"dL/dW = g_h^T a: {info['exact']} of {info['batches']} recorded batches exact "
                              f"(batch <= the layer's {info['outputs']} outputs and g_h of full rank)")
    return build_view(
        setup=setup.scenario.setup, granted=granted, transcript=transcript, input_shape=data.shape,
        num_classes=data.num_classes, client_depth=setup.depth, label_layers=setup.label_layers,
        client_arch=fresh(template.client), tail_arch=fresh(template.tail),
        server_part=sm.server if setup.scenario.setup != "label-only" else torch.nn.Sequential(*sm.client, *sm.server),
        server_part_before=result.server_before, aux=(data.x_aux, data.y_aux), trained_client=sm.client,
        device=device, **_threat_extras(attack, granted, result, data, transcript),
        query_transform=deployed_transform(setup.test_hooks(), torch_generator(setup.scenario.seed, "query-noise")),
        defense=knowledge_of(defense) if defense is not None else None, derived=derived,
    )


def _threat_extras(attack: Attack, granted: frozenset[Capability], result: TrainResult, data: Data,
                   seen_as: Transcript) -> dict[str, Any]:
    """TRAIN_DATA and KNOWN_LABELS, built only when granted (they come from private data)."""
    out: dict[str, Any] = {}
    if Capability.TRAIN_DATA in granted:  # He et al.'s known training set, never the targets themselves
        seen = [o.ids for obs in result.transcript.windows.values() for o in obs if o.ids is not None]
        keep = torch.ones(len(data.x_train), dtype=torch.bool)
        if seen:
            keep[torch.cat(seen).long()] = False
        out["train_data"] = (data.x_train[keep].clone(), data.y_train[keep].clone())
    if Capability.KNOWN_LABELS in granted:  # Li et al.: the first n observed samples of each class
        n = int(getattr(attack, "known_per_class", 1))
        known = {}
        for w in ("before", "after"):
            obs = [o.ids for o in seen_as.observations(w) if o.ids is not None]  # as the attack sees them
            ids = torch.cat(obs).long() if obs else torch.zeros(0, dtype=torch.long)
            true_ids = resolve(ids, result.transcript)
            y = result.truth.labels(true_ids) if len(ids) else torch.zeros(0, dtype=torch.long)
            pick = [i for c in torch.unique(y).tolist() for i in (y == c).nonzero().flatten()[:n].tolist()]
            known[w] = (ids[pick].clone(), y[pick].clone())
        out["known_labels"] = known
    return out


def _reinitialised(part: torch.nn.Sequential) -> torch.nn.Sequential:
    m = copy.deepcopy(part)
    for layer in m.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return m
