"""One training run, two setups: what a vanilla server would have seen of a u-shaped run.

A vanilla run (the server computes the loss from labels sent in clear) and a u-shaped run (the client
keeps the last layers and its labels) of the same model, data order and seed train *the same weights,
bit for bit*, as long as the defense changes nothing the label owner does: the loss, the gradients and
every optimiser step are the same computations, only the party that runs the last layers differs
(tests/test_shared_runs.py checks it for every defense that declares it, `Defense.label_owner_neutral`).
The runner then trains such a defense once, u-shaped, and serves both setups' cells from that run;
`as_vanilla` rebuilds the vanilla side:

- the model: the label owner's layers join the server part (the vanilla server holds them);
- the transcript: per step, the smashed data as sent and the labels the label owner used
  (``Observation.tail_labels``: exactly what a vanilla client sends, fake SplitGuard batches included);
  the u-shaped-only messages (cut gradients, the server's output, tail gradients) are dropped;
- the costs: the label owner's seconds move from the client's time to the server's, and the client's
  FLOPs are the front's alone.

The truth, the test accuracy (same model) and the defense's report are unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .cost import flops_per_sample
from .split import SplitModel
from .transcript import Observation, Transcript


def _vanilla_obs(o: Observation) -> Observation:
    return Observation(step=o.step, ids=o.ids, smashed=o.smashed, labels=o.tail_labels)


def as_vanilla(result: Any, input_shape: tuple[int, ...]) -> Any:
    """The `TrainResult` of a u-shaped run as a vanilla run of the same training would have returned it
    (its ``cost`` through `vanilla_cost`)."""
    sm: SplitModel = result.model
    model = SplitModel(client=sm.client, server=nn.Sequential(*sm.server, *sm.tail), tail=nn.Sequential(),
                       depth=sm.depth)
    before = result.server_before if result.tail_before is None else \
        nn.Sequential(*result.server_before, *result.tail_before)
    transcript = Transcript(setup="vanilla", windows={w: [_vanilla_obs(o) for o in obs]
                                                      for w, obs in result.transcript.windows.items()},
                            tracked=result.transcript.tracked)
    return dataclasses.replace(result, model=model, transcript=transcript, server_before=before, tail_before=None,
                               cost=vanilla_cost(result.cost, sm.client, input_shape))


def vanilla_cost(cost: dict[str, Any], client: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """A u-shaped run's cost figures as the vanilla run's: the label owner's seconds are the server's."""
    out = dict(cost)
    owner = float(out.pop("label_owner_s", 0.0))
    before = float(out.get("client_s", 0.0))
    per = float(out.get("client_s_per_sample", 0.0))
    client_s = max(before - owner, 0.0)
    out["client_s"] = round(client_s, 4)
    out["server_s"] = round(float(out.get("server_s", 0.0)) + owner, 4)
    out["client_s_per_sample"] = per * client_s / before if before > 0 else per
    out["client_flops"] = flops_per_sample(client, tuple(input_shape))
    return out
