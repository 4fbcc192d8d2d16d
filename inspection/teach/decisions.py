"""One decision an inspector made about an image, as the model file records it (`info.extra["teaching"]`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: What a decision says of an image.
GOOD, DEFECT = "good", "defect"
#: What a good image was used for: learned by the method, put in the calibration set (a seeded share of them:
#: new conditions must back the threshold's promise too), or kept for the next refit (methods that cannot learn
#: without one); a defect goes to the model's defect library.
LEARNED, CALIBRATION, KEPT_FOR_REFIT, LIBRARY = "learned", "calibration", "kept for a refit", "defect library"


@dataclass
class Decision:
    """An inspector's decision about one image, and what it changed."""

    id: str  # the decision's number and the image's hash: "3-1a2b3c4d"
    action: str  # GOOD or DEFECT
    image_hash: str  # sha256 of the decoded pixels (and their shape): the same picture under another name is one
    image_name: str
    when: str  # ISO 8601, UTC
    who: str
    score_before: float  # on the model's scale (threshold 0.5), before the decision
    score_after: float  # after it
    use: str  # LEARNED, CALIBRATION, KEPT_FOR_REFIT or LIBRARY
    defect_type: str = ""
    image_path: str = ""  # where the image was, when it was a file (a refit reads it again)
    #: What the method needs to undo its learning exactly (`AnomalyModel.unlearn`), e.g. the bank rows added.
    learned: dict[str, Any] = field(default_factory=dict)
    #: The calibration before the decision (its file form), when the decision changed it.
    calibration_before: dict[str, Any] | None = None
    #: What undoing the features kept of an image taught into the calibration set takes
    #: (`AnomalyModel.forget_heldout_image`), when they were kept.
    heldout_kept: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Decision:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)

    @property
    def summary(self) -> str:
        """One line for a history list."""
        what = f"defect ({self.defect_type})" if self.action == DEFECT else "good"
        rows = self.learned.get("rows_added")
        detail = f"{self.use}, {rows} bank rows" if rows is not None else self.use
        return (f"{self.when} {self.who or '?'}: {self.image_name} is {what} — {detail}; score "
                f"{self.score_before:.3f} → {self.score_after:.3f}")
