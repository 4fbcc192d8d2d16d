"""What a method can do, in one frozen object (scikit-learn keeps such facts in its estimator tags): the resize
modes it works in, whether it reconstructs the image, whether it trains by gradient descent, the parameter naming
its variant, and the stages its fitting reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Capabilities:
    """A method's capabilities; pages, the CLI, the bench and the base class read them, none of them by name."""

    #: The resize modes the method can work in, and why not the others (said when one is asked for).
    resize_modes: tuple[str, ...] = ("center_crop", "full")
    resize_modes_reason: str = "its scoring assumes one fixed working size"
    #: Whether `predict` also returns reconstructed images, and why not when it does not (shown on the Inspect page).
    reconstructs: bool = False
    no_reconstruction_reason: str = "this method scores features; it does not reconstruct the image"
    #: Whether fitting trains weights by gradient descent (then it runs with autograd on and reports a loss).
    trains_by_gradient: bool = False
    #: The parameter whose value names a variant of the method in tables, e.g. "scoring" → "vae (projection)".
    variant_param: str = ""
    #: Why the method's scoring cannot be exported as one graph (`inspection export`); empty when it can.
    export_refused: str = "its export is not written yet"
    #: Why the method cannot learn a good image without a refit (`inspection teach`); empty when it can
    #: (`AnomalyModel.learn_good`).
    teach_refused: str = ("it learns by training a network on all the good images at once: a taught image is kept in "
                          "the model's good set for the next refit")
    #: Human-readable names of the progress stages the method's fitting reports, by stage.
    stages: Mapping[str, str] = field(default_factory=dict)

    def extended(self, **changes: Any) -> Capabilities:
        """A subclass's capabilities: these with `changes`, whose `stages` are added to the inherited ones."""
        stages = {**self.stages, **changes.pop("stages", {})}
        return replace(self, **changes, stages=stages)
