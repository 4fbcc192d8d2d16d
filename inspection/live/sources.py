"""The kinds of `Source`: a video file, a USB camera (`usb:N`), an RTSP or HTTP(S) MJPEG stream, a watched folder —
and `open_source`, which picks one from what the user typed.

Every frame is decoded as `predict` decodes a file: RGB uint8, shrunk so that its longer side is at most `max_side`
(the display limit), with its size before the shrink — so that a frame scores as the same picture would as a file.
Cameras and streams that drop are reconnected with back-off; the gap is logged, never raised."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cv2.utils import logging as cv2_logging
from PIL import Image

from ..data.images import IMAGE_EXTENSIONS, box_shrink, list_images, load_image_with_size
from ..data.preprocess import DISPLAY_MAX_SIDE
from ..errors import ImageLoadError
from .frames import OPEN_TIMEOUT_S, Backoff, EventLog, Frame, Source, SourceError
from .mjpeg import MjpegConnection, connect_mjpeg

#: What SOURCE may be, for the message of a source that is none of these.
SOURCE_KINDS = ("a video file, usb:N (a USB camera), an rtsp:// URL, an http(s):// URL of an MJPEG stream, "
                "or a folder of images")
#: How often a watched folder is listed (seconds): a new file is read once it has kept its size over one poll, so
#: it waits between one and two polls before it is scored.
FOLDER_POLL_S = 0.25
#: The longest wait between two tries to reach a camera or a stream that dropped (seconds).
RECONNECT_LONGEST_WAIT_S = 2.0
#: A video whose frame rate is unknown (or absurd) is played at this rate.
DEFAULT_FPS = 25.0

Picture = tuple[np.ndarray, tuple[int, int]]  # an RGB picture and its (height, width) before any shrink


# --------------------------------------------------------------------------------------------------- helpers


# FFmpeg's own messages ("[tcp @ 0x…] Connection refused", "moov atom not found") bypass OpenCV's log level; OpenCV
# sets FFmpeg's level from this variable once, when it first opens a video, so it is set on import (a user's own
# setting wins). The sources say what went wrong in one line of their own.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved = 0


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own warnings off while it opens or reads a device or stream: a failure becomes our one line, not
    a screen of "[ WARN:0@…] can't open camera by index". Counted, so that overlapping users restore the level
    only when the last one leaves."""
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                cv2_logging.setLogLevel(_quiet_saved)


def shrink_like_files(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """An RGB frame shrunk exactly as `load_image_with_size` shrinks an RGB file of the same pixels, so that a
    video frame and the PNG of it give the same picture."""
    if max_side is None or max(rgb.shape[:2]) <= max_side:
        return rgb
    return np.ascontiguousarray(np.asarray(box_shrink(Image.fromarray(rgb), max_side)))


def _rgb(bgr: np.ndarray, max_side: int | None) -> Picture:
    """OpenCV's picture (BGR, BGRA or gray) as predict's RGB, and its size before the shrink."""
    if bgr.ndim == 2:
        rgb = np.repeat(bgr[:, :, None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(bgr[:, :, 2::-1])  # BGR(A) → RGB, alpha dropped
    if rgb.dtype != np.uint8:  # 16-bit captures: as predict rescales 16-bit files
        rgb = ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return shrink_like_files(rgb, max_side), (int(bgr.shape[0]), int(bgr.shape[1]))


def _open_capture(target: str | int, api: int, params: list[int], label: str, timeout: float) -> cv2.VideoCapture:
    """A `cv2.VideoCapture` opened within `timeout` seconds, or SourceError. The open runs in a thread of its own:
    a backend that ignores its timeout (or has none) then costs a stray thread, not a hung pipeline."""
    done: dict[str, Any] = {}
    lock = threading.Lock()

    def attempt() -> None:
        try:
            with _quiet_opencv():
                capture = cv2.VideoCapture(target, api, params)
        except cv2.error as error:
            done["error"] = error
            return
        with lock:
            if done.get("abandoned"):
                capture.release()
            else:
                done["capture"] = capture

    thread = threading.Thread(target=attempt, name=f"open {label}", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        capture = done.get("capture")
        if capture is None:
            done["abandoned"] = True
    if capture is None:
        if "error" in done:
            raise SourceError(f"{label}: cannot be opened ({str(done['error']).strip().splitlines()[-1]})")
        raise SourceError(f"{label}: no answer within {timeout:g} s")
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"{label}: cannot be opened (nothing answers there, or no such device or stream)")
    return capture


def _frame(image: Picture, name: str | None, index: int, path: str | None = None) -> Frame:
    picture, size = image
    return Frame(image=picture, original_size=size, name=name or f"frame-{index:06d}", index=index, path=path)


# --------------------------------------------------------------------------------------------------- a video file


class VideoFileSource(Source):
    """A video file, decoded with OpenCV. With `realtime` it plays like a camera, each frame delivered at the
    file's own rate from the first (`live`); without, as fast as it decodes (nothing dropped)."""

    def __init__(self, path: str | os.PathLike, *, log: EventLog | None = None, realtime: bool = True,
                 max_side: int | None = None, uri: str | None = None):
        super().__init__(uri or os.fspath(path), log)
        self.path = Path(path)
        self.realtime = realtime
        self.live = realtime
        self.max_side = max_side
        self.fps = DEFAULT_FPS
        self.frame_count: int | None = None
        self._capture: cv2.VideoCapture | None = None
        self._lock = threading.Lock()  # a capture must not be released while another thread reads it

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.uri}: no such video file")
        with _quiet_opencv():
            capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.uri}: not a video OpenCV can read")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if np.isfinite(fps) and 0 < fps <= 1000:
            self.fps = float(fps)
        else:
            self.log(f"{self.uri}: the file gives no frame rate; played at {DEFAULT_FPS:g} frames/s")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        with self._lock:
            self._capture = capture

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        if self._capture is None:
            self.open()
        index = 0
        started = 0.0
        while not stop.is_set():
            with self._lock:
                if self._capture is None:  # closed
                    return
                ok, bgr = self._capture.read()
            if not ok:
                return  # the end of the file
            if self.realtime:
                # Frame i is due i / fps after the first one, as a camera would have sent it.
                if index == 0:
                    started = time.perf_counter()
                elif stop.wait(max(0.0, started + index / self.fps - time.perf_counter())):
                    return
            yield _frame(_rgb(bgr, self.max_side), None, index)
            index += 1

    def close(self) -> None:
        with self._lock:
            capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def describe(self) -> str:
        count = f", {self.frame_count} frames" if self.frame_count else ""
        pace = "played at its rate" if self.realtime else "as fast as read"
        return f"video {self.uri} ({self.fps:g} frames/s{count}, {pace})"


# --------------------------------------------------------------------------------------------------- live feeds


class _Feed(ABC):
    """One connection of a reconnecting source: pictures until it drops."""

    @abstractmethod
    def images(self, stop: threading.Event) -> Iterator[Picture]:
        """Pictures until the connection ends (return) or fails (raise); stops when `stop` is set."""

    @abstractmethod
    def close(self) -> None: ...


class _CaptureFeed(_Feed):
    def __init__(self, capture: cv2.VideoCapture, label: str, max_side: int | None):
        self.capture, self.label, self.max_side = capture, label, max_side
        self._lock = threading.Lock()  # close() from another thread waits for the read in progress
        self._closed = False

    def images(self, stop: threading.Event) -> Iterator[Picture]:
        while not stop.is_set():
            with self._lock:
                if self._closed:
                    return
                with _quiet_opencv():
                    ok, bgr = self.capture.read()
            if not ok or bgr is None:
                raise SourceError(f"{self.label}: no frame came")
            yield _rgb(bgr, self.max_side)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.capture.release()


class _MjpegFeed(_Feed):
    def __init__(self, connection: MjpegConnection, label: str, max_side: int | None, log: EventLog):
        self.connection, self.label, self.max_side, self.log = connection, label, max_side, log
        self.bad_parts = 0

    def images(self, stop: threading.Event) -> Iterator[Picture]:
        for jpeg in self.connection.parts(stop):
            try:
                # The very decode predict gives a JPEG file: a frame scores as that file would.
                yield load_image_with_size(jpeg, name=f"{self.label} part", max_side=self.max_side)
            except ImageLoadError as error:
                self.bad_parts += 1
                if self.bad_parts == 1 or self.bad_parts % 100 == 0:  # a stream of bad parts is not a flood
                    self.log(f"{error} (skipped; {self.bad_parts} so far)")
            if stop.is_set():
                return

    def close(self) -> None:
        self.connection.close()


class _ReconnectingSource(Source):
    """A camera or a stream: frames as they come; when the feed drops, reconnect with back-off until `stop`,
    logging one line when it drops and one with the gap when it is back."""

    live = True

    def __init__(self, uri: str, log: EventLog | None = None, *, max_side: int | None = None,
                 timeout: float = OPEN_TIMEOUT_S):
        super().__init__(uri, log)
        self.max_side = max_side
        self.timeout = timeout
        self.reconnects = 0
        self._feed: _Feed | None = None
        self._closed = threading.Event()
        self._feed_lock = threading.Lock()

    @abstractmethod
    def _connect(self, stop: threading.Event | None = None) -> _Feed:
        """A new feed, or SourceError within `timeout` seconds."""

    def open(self) -> None:
        self._closed.clear()
        self._set_feed(self._connect())

    def _set_feed(self, feed: _Feed | None) -> None:
        with self._feed_lock:
            old, self._feed = self._feed, feed
        if old is not None and old is not feed:
            old.close()

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        if self._feed is None:
            self.open()
        index = 0
        # A camera back on the line should be scored again within a couple of seconds: waits stop growing at 2 s.
        backoff = Backoff(first=0.25, longest=RECONNECT_LONGEST_WAIT_S)
        while not stop.is_set() and not self._closed.is_set():
            feed = self._feed
            if feed is None:
                return
            try:
                for image in feed.images(stop):
                    yield _frame(image, None, index)
                    index += 1
                reason = "the stream ended"
            except (SourceError, cv2.error) as error:
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            self._set_feed(None)
            if stop.is_set() or self._closed.is_set():
                return
            dropped = time.perf_counter()
            self.log(f"{self.uri}: dropped ({reason.removeprefix(self.uri + ': ')}); reconnecting")
            while True:
                if not backoff.wait(stop) or self._closed.is_set():
                    return
                try:
                    feed = self._connect(stop)
                except SourceError:
                    continue
                break
            if self._closed.is_set():  # closed from another thread while connecting
                feed.close()
                return
            backoff.reset()
            self._set_feed(feed)
            self.reconnects += 1
            self.log(f"{self.uri}: back after {time.perf_counter() - dropped:.1f} s (reconnect {self.reconnects})")

    def close(self) -> None:
        self._closed.set()
        self._set_feed(None)


class CameraSource(_ReconnectingSource):
    """A USB camera, `usb:N` (`/dev/videoN` on Linux), read with OpenCV."""

    def __init__(self, index: int, *, log: EventLog | None = None, max_side: int | None = None,
                 timeout: float = OPEN_TIMEOUT_S, uri: str | None = None):
        super().__init__(uri or f"usb:{index}", log, max_side=max_side, timeout=timeout)
        self.index = index

    def _connect(self, stop: threading.Event | None = None) -> _Feed:
        device = Path(f"/dev/video{self.index}")
        linux = sys.platform.startswith("linux")
        if linux and not device.exists():
            # Said at once, without OpenCV's probing of every backend.
            found = sorted(int(match.group(1)) for entry in Path("/dev").glob("video*")
                           if (match := re.fullmatch(r"video(\d+)", entry.name)))
            cameras = ", ".join(f"usb:{number}" for number in found) or "none"
            raise SourceError(f"{self.uri}: no camera {device} (cameras here: {cameras})")
        api = cv2.CAP_V4L2 if linux else cv2.CAP_ANY
        params = _timeouts(self.timeout)
        capture = _open_capture(self.index, api, params, self.uri, self.timeout)
        return _CaptureFeed(capture, self.uri, self.max_side)

    def describe(self) -> str:
        return f"camera {self.uri}"


class StreamSource(_ReconnectingSource):
    """A network stream: `rtsp://` through OpenCV's FFmpeg (with open and read timeouts), `http(s)://` MJPEG
    through `mjpeg.connect_mjpeg`, each JPEG decoded exactly as predict decodes a JPEG file."""

    def __init__(self, url: str, *, log: EventLog | None = None, max_side: int | None = None,
                 timeout: float = OPEN_TIMEOUT_S):
        super().__init__(url, log, max_side=max_side, timeout=timeout)
        self.scheme = url.partition("://")[0].lower()
        if self.scheme not in ("rtsp", "rtsps", "http", "https"):
            raise SourceError(f"{url}: not an rtsp:// or http(s):// URL")

    def _connect(self, stop: threading.Event | None = None) -> _Feed:
        if self.scheme in ("http", "https"):
            connection = connect_mjpeg(self.uri, self.timeout, stop)
            return _MjpegFeed(connection, self.uri, self.max_side, self.log)
        capture = _open_capture(self.uri, cv2.CAP_FFMPEG, _timeouts(self.timeout), self.uri, self.timeout)
        return _CaptureFeed(capture, self.uri, self.max_side)

    def describe(self) -> str:
        kind = "MJPEG stream" if self.scheme.startswith("http") else "RTSP stream"
        return f"{kind} {self.uri}"


def _timeouts(timeout: float) -> list[int]:
    """OpenCV's open and read timeouts (the backends that know them obey; the others ignore them)."""
    milliseconds = int(timeout * 1000)
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]


# --------------------------------------------------------------------------------------------------- a folder


class FolderSource(Source):
    """The images in a folder, sorted by name, then each new one as it appears (checked every `poll_s` seconds),
    each file once. A file is read only once its size and time of change have stayed the same across one poll, so
    that one still being written is never read half-written. Names in `skip` (already scored) are passed over.
    With `watch=False` it ends after the files present at the start."""

    live = False

    def __init__(self, folder: str | os.PathLike, *, log: EventLog | None = None, poll_s: float = FOLDER_POLL_S,
                 max_side: int | None = None, skip: Iterable[str] = (), watch: bool = True, uri: str | None = None):
        super().__init__(uri or os.fspath(folder), log)
        if not poll_s > 0:
            raise ValueError(f"poll_s must be positive, got {poll_s!r}")
        self.folder = Path(folder)
        self.poll_s, self.max_side, self.watch = poll_s, max_side, watch
        self.done: set[str] = set(skip)  # names read (or found unreadable), and those given to skip
        self.unreadable = 0
        self._unlisted = False  # the folder could not be listed at the last poll (logged once, not every poll)

    def open(self) -> None:
        if not self.folder.is_dir():
            what = "not a folder" if self.folder.exists() else "no such folder"
            raise SourceError(f"{self.uri}: {what}")

    def _waiting(self) -> list[Path]:
        """The image files not read yet, sorted by name."""
        try:
            names = list_images(self.folder)
        except OSError as error:  # the folder went away (an unmounted share): wait for it to come back
            if not self._unlisted:
                self.log(f"{self.uri}: cannot be listed ({error}); waiting for it")
            self._unlisted = True
            return []
        if self._unlisted:
            self.log(f"{self.uri}: can be listed again")
            self._unlisted = False
        return [path for path in names if path.name not in self.done]

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        self.open()
        index = 0
        seen: dict[str, tuple[int, int]] = {}  # name → (size, mtime) at the last poll, for files not yet read
        at_start: set[str] | None = None  # with watch=False: the names to read before ending
        while not stop.is_set():
            waiting = self._waiting()
            if at_start is None:
                at_start = {path.name for path in waiting}
            if not self.watch:
                waiting = [path for path in waiting if path.name in at_start]
                if not waiting:
                    return
            listed = time.monotonic()
            ready, observed = _settled(waiting, seen, require_content=self.watch, quiet_s=self.poll_s)
            seen = observed  # forgets files that vanished
            for path in ready:
                if stop.is_set():
                    return
                self.done.add(path.name)
                seen.pop(path.name, None)
                try:
                    image = load_image_with_size(path, max_side=self.max_side)
                except ImageLoadError as error:
                    self.unreadable += 1
                    self.log(f"{error} (skipped)")
                    continue
                yield _frame(image, path.name, index, path=str(path))
                index += 1
            # The next listing one poll after this one, not after the files were scored: files that came meanwhile
            # are not kept waiting for the scoring and a whole poll on top.
            if stop.wait(max(0.0, self.poll_s - (time.monotonic() - listed))):
                return

    def describe(self) -> str:
        return f"folder {self.uri} ({'watched' if self.watch else 'read once'})"


def _settled(paths: list[Path], before: dict[str, tuple[int, int]], *, require_content: bool, quiet_s: float
             ) -> tuple[list[Path], dict[str, tuple[int, int]]]:
    """The files no longer being written (in order) — their size and time of change are those of the last poll, or,
    seen for the first time, their last change is at least `quiet_s` old (as good a sign: nothing was written for a
    poll's time) — and what each is now. An empty file is not ready while watching: it is most likely being
    created."""
    ready, now = [], {}
    wall = time.time()
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            # A dangling link or a link loop never settles: read it at once, so that its one line is logged.
            if path.is_symlink():
                ready.append(path)
            continue
        state = (info.st_size, info.st_mtime_ns)
        now[path.name] = state
        unchanged = before.get(path.name) == state if path.name in before else wall - info.st_mtime >= quiet_s
        if unchanged and (info.st_size > 0 or not require_content):
            ready.append(path)
    return ready, now


# --------------------------------------------------------------------------------------------------- the factory


_USB = re.compile(r"usb:(\d+)", re.IGNORECASE)


def open_source(uri: str, *, log: EventLog | None = None, realtime: bool = True, poll_s: float = FOLDER_POLL_S,
                max_side: int | None = DISPLAY_MAX_SIDE, skip: Iterable[str] = (), watch: bool = True,
                timeout: float = OPEN_TIMEOUT_S) -> Source:
    """The source `uri` names (constructed, not opened: the pipeline calls `open()`): a video file, `usb:N`, an
    rtsp:// or http(s):// URL, or a folder. `realtime` plays a video at its own rate; `poll_s`, `skip` and `watch`
    are the folder's. Frames are shrunk to `max_side` as predict shrinks files. SourceError with one line for
    anything else."""
    text = uri.strip()
    if not text:
        raise SourceError(f"no source given: SOURCE may be {SOURCE_KINDS}")
    if match := _USB.fullmatch(text):
        return CameraSource(int(match.group(1)), log=log, max_side=max_side, timeout=timeout, uri=text)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in ("rtsp", "rtsps", "http", "https"):
        return StreamSource(text, log=log, max_side=max_side, timeout=timeout)
    if scheme or text.lower().startswith("usb"):
        raise SourceError(f"{text}: unknown kind of source: SOURCE may be {SOURCE_KINDS}")
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path, log=log, poll_s=poll_s, max_side=max_side, skip=skip, watch=watch, uri=text)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise SourceError(f"{text}: is one image, not a video: give its folder (or use predict)")
        return VideoFileSource(path, log=log, realtime=realtime, max_side=max_side, uri=text)
    raise SourceError(f"{text}: no such file or folder: SOURCE may be {SOURCE_KINDS}")

