"""What flows through a live pipeline: a `Frame` from a `Source`, a scored frame offered to each `Sink`, and the
back-off both use when the far side (a camera, a stream, a broker, a webhook) is away."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InspectionError

#: How long opening a source may take before it is called unreachable (seconds).
OPEN_TIMEOUT_S = 5.0


class SourceError(InspectionError, OSError):
    """A source cannot be opened: an unknown camera, a wrong URL, a stream that does not answer, a missing folder."""

    what = "This source cannot be read"


class SinkError(InspectionError, ValueError):
    """A sink's target is malformed (a bad URL, an unwritable folder): said before the pipeline starts."""

    what = "This sink cannot be used"


@dataclass
class Frame:
    """One picture from a source, decoded as `predict` decodes a file (RGB uint8, shrunk to the display limit)."""

    image: np.ndarray  # H×W×3 uint8 RGB
    original_size: tuple[int, int]  # (height, width) as the source gave it, before any shrink
    name: str  # the file's name, or "frame-000123" for a stream
    index: int  # the source's count of frames, from 0 (a dropped frame leaves a gap)
    received: float = field(default_factory=time.perf_counter)  # when the source got it: latency starts here
    timestamp: float = field(default_factory=time.time)  # the same moment, wall clock (seconds since the epoch)
    path: str | None = None  # the file it came from, for a folder source
    decode_ms: float = 0.0  # what decoding it took (bytes or a video packet to pixels)


#: Called with one line about what a source or sink went through (a reconnect, a gap, a retry).
EventLog = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


class Backoff:
    """Waits that double from `first` to `longest` seconds; `reset()` after a success. `wait` returns early (False)
    when `stop` is set."""

    def __init__(self, first: float = 0.25, longest: float = 5.0):
        self.first, self.longest = first, longest
        self.next = first

    def reset(self) -> None:
        self.next = self.first

    def wait(self, stop: threading.Event) -> bool:
        delay, self.next = self.next, min(self.next * 2, self.longest)
        return not stop.wait(delay)


class Source(ABC):
    """Where frames come from. `live` sources (a camera, a stream, a video played at its own rate) go on whether or
    not the model keeps up, so the pipeline keeps only the newest frame; a folder waits to be read, so nothing of
    it is dropped."""

    #: What the user gave (a path, `usb:0`, a URL), for messages.
    uri: str
    live: bool = True

    def __init__(self, uri: str, log: EventLog | None = None):
        self.uri = uri
        self.log = log or _ignore

    @abstractmethod
    def open(self) -> None:
        """Connect; raise SourceError with one line within OPEN_TIMEOUT_S when it cannot be reached."""

    @abstractmethod
    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Frames until the source ends (a video's last frame) or `stop` is set. A stream that drops is reconnected
        with back-off, and the gap is logged (`self.log`), not raised."""

    def close(self) -> None:
        """Release the camera, the connection or the file."""

    def describe(self) -> str:
        return self.uri


@dataclass
class SinkHealth:
    """A sink's counts and state, for the pipeline's report and the Live page."""

    kind: str
    target: str
    sent: int = 0  # messages delivered
    filtered: int = 0  # scored frames the filter or the rate limit left out
    dropped: int = 0  # messages given up (its queue was full)
    retries: int = 0  # failed attempts that were tried again
    pending: int = 0  # messages waiting to be sent
    last_error: str | None = None
    healthy: bool = True  # False while the far side fails

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScoredFrame:
    """A frame and what the model said of it: `record` is `results.record`'s JSON record (with the frame's
    `live` fields), `result` the full result (heatmap, regions) for sinks that draw it."""

    frame: Frame
    record: dict[str, Any]
    result: Any  # results.image.ImageResult

    @property
    def is_defect(self) -> bool:
        return self.record["verdict"] != "good"


class Sink(ABC):
    """Where verdicts go. `offer` never blocks the scoring: it applies the filter and the rate limit, then queues
    the message (bounded) for the sink's own thread, which sends it and retries with back-off while the far side
    fails."""

    kind: str

    @abstractmethod
    def offer(self, scored: ScoredFrame) -> bool:
        """Queue one scored frame; False when the filter or the rate limit leaves it out."""

    @abstractmethod
    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most `timeout` seconds), then stop."""

    @abstractmethod
    def health(self) -> SinkHealth:
        """The counts and state now."""
