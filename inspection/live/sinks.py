"""Where a live pipeline's verdicts go: a folder (overlay PNGs and a JSON-lines log), a CSV file, a webhook, an MQTT
topic. Each sink filters (all frames or defects only) and rate-limits in `offer`, queues the message (bounded: the
oldest is dropped when it is full), and sends from a thread of its own, retrying the same message with back-off
while the far side fails — so the scoring never waits on a slow disk, a dead webhook or a broker that is away.

`make_sink("KIND:TARGET")` builds one from what a user types: `folder:DIR`, `csv:FILE`, `webhook:http(s)://…`,
`mqtt://host:port/topic` (or `mqtt:mqtt://…`).
"""

from __future__ import annotations

import collections
import csv
import hashlib
import inspect
import io
import json
import os
import re
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..results.record import overlay_png
from .frames import Backoff, EventLog, ScoredFrame, Sink, SinkError, SinkHealth

#: Messages a sink holds while its far side is slow or away; beyond it the oldest is dropped (and counted).
QUEUE_SIZE = 256
#: The folder sink queues whole results (image and heatmap, megabytes each), so it holds fewer.
FOLDER_QUEUE_SIZE = 32
#: (first, longest) wait in seconds between tries of a message that failed.
RETRY_WAITS = (0.25, 5.0)
#: What `every` may be: every scored frame, or only those whose verdict is not good (defect or unlike).
EVERY = ("all", "defects")
#: The CSV sink's columns, in order.
CSV_COLUMNS = ("time", "frame", "verdict", "score", "raw_score", "threshold", "regions", "largest_region_area",
               "latency_ms", "model_fingerprint")


class _Rejected(Exception):
    """The far side refused a message for good (a 4xx other than 408/429): retrying cannot help, so it is dropped."""


class _Message:
    """One queued message: the payload built in `offer`, and what the sender must keep across retries."""

    __slots__ = ("payload", "name", "index", "state")

    def __init__(self, payload: Any, name: str, index: int):
        self.payload = payload
        self.name, self.index = name, index
        self.state: Any = None  # the sink's own: a chosen file name, an MQTT message id


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "…"


def _silent(line: str) -> None:
    pass


def _live(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("live") or {}


class QueuedSink(Sink):
    """What every sink shares: the filter, the rate limit, the bounded queue, the sending thread with its retries,
    and the counts. A kind builds its message in `_message` (in the caller's thread: keep it cheap) and delivers
    it in `_send` (in the sink's thread: raise to have it retried)."""

    kind = "sink"

    def __init__(self, target: str, *, every: str = "all", max_per_s: float | None = None,
                 log: EventLog | None = None, queue_size: int = QUEUE_SIZE,
                 retry_waits: tuple[float, float] = RETRY_WAITS):
        if every not in EVERY:
            raise SinkError(f"every must be one of {', '.join(EVERY)}, not {every!r}")
        if max_per_s is not None and not max_per_s > 0:
            raise SinkError(f"max_per_s must be above 0, not {max_per_s!r}")
        if queue_size < 1:
            raise SinkError(f"queue_size must be at least 1, not {queue_size!r}")
        self.target, self.every, self.max_per_s = target, every, max_per_s
        self.log: EventLog = log or _silent
        self.retry_waits = retry_waits
        self._queue: collections.deque[_Message] = collections.deque()
        self._queue_size = queue_size
        self._inflight: _Message | None = None
        self._lock = threading.Condition()
        self._health = SinkHealth(kind=self.kind, target=target)
        # A token bucket holding one second's worth: the average rate is capped, a short burst passes.
        self._burst = max(1.0, max_per_s or 0.0)
        self._tokens, self._refilled = self._burst, time.monotonic()
        self._closing = False
        self._abort = threading.Event()  # close() ran out of time: give up the message being retried
        self._nudge = threading.Event()  # cuts a back-off wait short (the abort, or a kind's "try now")
        self._thread: threading.Thread | None = None
        self._last_line: str | None = None
        self._retrying = False  # the sink's thread is retrying a message (said once)

    # The caller's side.

    def offer(self, scored: ScoredFrame) -> bool:
        if self.every == "defects" and not scored.is_defect:
            with self._lock:
                self._health.filtered += 1
            return False
        message = _Message(self._message(scored), scored.frame.name, scored.frame.index)
        with self._lock:
            if self._closing:
                self._health.dropped += 1
                return False
            if self.max_per_s is not None and not self._take_token():
                self._health.filtered += 1
                return False
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()  # the oldest goes: a live view wants the newest verdicts
                self._health.dropped += 1
            self._queue.append(message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"sink-{self.kind}", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        return True

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * float(self.max_per_s or 0))
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def health(self) -> SinkHealth:
        with self._lock:
            health = SinkHealth(**self._health.as_dict())
            health.pending = len(self._queue) + (self._inflight is not None)
            return health

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closing and self._thread is None:
                return
            self._closing = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # the far side is still failing: give up what is left
                self._abort.set()
                self._nudge.set()
                self._interrupt()
                thread.join(min(1.0, max(timeout, 0.1)))
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            self._health.dropped += left
            left += self._inflight is not None
            self._thread = None
        if left:
            self._say(f"closed with {left} message(s) not delivered")
        self._release()

    def __enter__(self) -> QueuedSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The sink's thread.

    def _run(self) -> None:
        backoff = Backoff(*self.retry_waits)
        while not self._abort.is_set():
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                message = self._inflight = self._queue.popleft()
            try:
                self._deliver(message, backoff)
            finally:
                with self._lock:
                    self._inflight = None
                    self._lock.notify_all()

    def _deliver(self, message: _Message, backoff: Backoff) -> None:
        """Send one message until it is delivered, refused for good, or the sink is closed in the middle."""
        while True:
            try:
                self._send(message)
            except _Rejected as error:
                text = _one_line(error)
                with self._lock:
                    self._health.dropped += 1
                    self._health.last_error, self._health.healthy = text, False
                self._say(f"refused a message, dropped: {text}")
                return
            except Exception as error:  # whatever the far side does wrong: the same message is tried again
                text = _one_line(error)
                with self._lock:
                    self._health.last_error, self._health.healthy = text, False
                if not self._retrying:  # one line when the failing starts, none per retry
                    self._retrying = True
                    self._say(f"failing ({text}); retrying with back-off")
                backoff.wait(self._nudge)
                self._nudge.clear()
                if self._abort.is_set():
                    with self._lock:
                        self._health.dropped += 1
                    return
                with self._lock:
                    self._health.retries += 1
                continue
            backoff.reset()
            self._retrying = False
            with self._lock:
                recovered = not self._health.healthy
                self._health.sent += 1
                self._health.healthy = True
            if recovered:
                self._say(f"delivering again ({self.health().retries} retries so far)")
            return

    def _say(self, line: str) -> None:
        """Log one line, not the same line twice in a row (a target that refuses every message says it once)."""
        if line == self._last_line:
            return
        self._last_line = line
        try:
            self.log(f"{self.kind} sink {self.target}: {line}")
        except Exception:  # a broken log must not stop the sending
            pass

    # What a kind provides.

    def _message(self, scored: ScoredFrame) -> Any:
        """The payload to queue for a scored frame (in the caller's thread: cheap, nothing that can block)."""
        return scored.record

    def _send(self, message: _Message) -> None:
        """Deliver one message; raise when it failed (retried), `_Rejected` when it never will be accepted."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Cut a send that is waiting short (close ran out of time)."""

    def _release(self) -> None:
        """Release files, connections and clients once the thread is done."""


def _safe_stem(name: str) -> str:
    stem = Path(name).stem or "frame"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SinkError(f"{what} {folder} cannot be written: {error.strerror or error}") from None


class FolderSink(QueuedSink):
    """Per frame, the heatmap overlay as a PNG (`<frame>-<index>.png`) and one line of `records.jsonl` (the record
    with the overlay's file name under "overlay")."""

    kind = "folder"
    RECORDS = "records.jsonl"

    def __init__(self, folder: str | os.PathLike, *, queue_size: int = FOLDER_QUEUE_SIZE, **options: Any):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"{self.folder} is a file, not a folder")
        _check_writable(self.folder, "the folder")
        super().__init__(str(self.folder), queue_size=queue_size, **options)

    def _message(self, scored: ScoredFrame) -> Any:
        # The overlay is drawn in the sink's thread (too slow for the caller's); the record is copied now, as it is.
        return scored.result, dict(scored.record)

    def _send(self, message: _Message) -> None:
        result, record = message.payload
        if message.state is None:  # chosen once, so that a retry rewrites the same file
            message.state = self._free_name(f"{_safe_stem(message.name)}-{message.index:06d}")
        name: str = message.state
        png = overlay_png(result)
        partial = self.folder / f".{name}.part"
        partial.write_bytes(png)
        os.replace(partial, self.folder / name)  # a reader never sees half a PNG
        line = json.dumps({**record, "overlay": name}, ensure_ascii=False) + "\n"
        # One write on an O_APPEND descriptor: lines of one writer never interleave.
        descriptor = os.open(self.folder / self.RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode("utf-8"))
        finally:
            os.close(descriptor)

    def _free_name(self, stem: str) -> str:
        name, number = f"{stem}.png", 1
        while (self.folder / name).exists():  # a second run from index 0 into the same folder
            number += 1
            name = f"{stem}-{number}.png"
        return name


class CsvSink(QueuedSink):
    """One row per frame (`CSV_COLUMNS`); the header is written once, and a file that has it is appended to."""

    kind = "csv"

    def __init__(self, file: str | os.PathLike, **options: Any):
        self.file = Path(file).expanduser()
        if self.file.is_dir():
            raise SinkError(f"{self.file} is a folder, not a CSV file")
        _check_writable(self.file.parent, "the CSV file's folder")
        self._header = self._row(CSV_COLUMNS)
        if self.file.is_file() and self.file.stat().st_size > 0:
            with open(self.file, encoding="utf-8", newline="") as existing:
                first = existing.readline()
            if first.rstrip("\r\n") != self._header.rstrip("\r\n"):
                raise SinkError(f"{self.file} has other columns than this sink writes ({', '.join(CSV_COLUMNS)}): "
                                "choose a new file")
        else:
            try:
                self.file.write_text(self._header, encoding="utf-8")
            except OSError as error:
                raise SinkError(f"{self.file} cannot be written: {error.strerror or error}") from None
        super().__init__(str(self.file), **options)

    @staticmethod
    def _row(values: Any) -> str:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(values)
        return text.getvalue()

    def _message(self, scored: ScoredFrame) -> Any:
        record = scored.record
        regions = record.get("regions") or []
        timing = record.get("timing_ms") or {}
        latency = timing.get("total")
        if latency is None:  # a record without timings: since the source got the frame
            latency = round((time.perf_counter() - scored.frame.received) * 1000, 3)
        moment = _live(record).get("captured_at") or datetime.fromtimestamp(
            scored.frame.timestamp, timezone.utc).isoformat(timespec="milliseconds")
        return self._row([moment, scored.frame.name, record.get("verdict"), record.get("score"),
                          record.get("raw_score"), (record.get("threshold") or {}).get("score"), len(regions),
                          max((int(region["area"]) for region in regions), default=0), latency,
                          (record.get("model") or {}).get("fingerprint", "")])

    def _send(self, message: _Message) -> None:
        row: str = message.payload
        with open(self.file, "a", encoding="utf-8", newline="") as output:
            if output.tell() == 0:  # the file was removed or emptied while running: a header again
                row = self._header + row
            output.write(row)


class WebhookSink(QueuedSink):
    """An HTTP POST of each record as JSON, with an `Idempotency-Key` header (the same on every retry of a message)
    so that a receiver can drop a repeat. A 2xx answer delivers it; 5xx, 408, 429 and connection errors are retried
    with back-off; any other answer (400, 401, 404, 413, a redirect…) means the message will never be accepted:
    it is logged, counted as dropped, and the next one is sent."""

    kind = "webhook"
    RETRIED = frozenset({408, 429})

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 5.0, **options: Any):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkError(f"a webhook needs an http:// or https:// URL with a host, not {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise SinkError(f"the webhook URL {url!r} has a bad port") from None
        if not timeout_s > 0:
            raise SinkError(f"timeout_s must be above 0, not {timeout_s!r}")
        import httpx

        self.url = url
        self._httpx = httpx
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}), follow_redirects=False)
        # The target as logged and shown: without a password in the URL (headers are never shown).
        netloc = parts.hostname + (f":{port}" if port else "")
        super().__init__(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), **options)

    def _message(self, scored: ScoredFrame) -> Any:
        body = json.dumps(scored.record, ensure_ascii=False).encode("utf-8")
        fingerprint = (scored.record.get("model") or {}).get("fingerprint", "")
        # The model, the frame's index and the body's digest: equal on each retry, unequal across frames and runs.
        key = f"{fingerprint}-{scored.frame.index}-{hashlib.sha256(body).hexdigest()[:16]}"
        return body, key

    def _send(self, message: _Message) -> None:
        body, key = message.payload
        try:
            response = self._client.post(self.url, content=body,
                                         headers={"Content-Type": "application/json", "Idempotency-Key": key})
        except self._httpx.HTTPError as error:  # its name says what failed: ConnectError, ReadTimeout…
            raise OSError(f"{type(error).__name__}: {_one_line(error)}") from error
        status = response.status_code
        if 200 <= status < 300:
            return
        answer = " ".join(response.text.split())[:120]
        text = f"HTTP {status}" + (f": {answer}" if answer else "")
        if status >= 500 or status in self.RETRIED:
            raise OSError(text)
        raise _Rejected(text)

    def _interrupt(self) -> None:
        self._client.close()  # a POST waiting on a silent server fails now

    def _release(self) -> None:
        self._client.close()


class MqttSink(QueuedSink):
    """Each record as JSON to an MQTT topic (`mqtt://host:port/topic`, `mqtts://` for TLS, user:password@ when the
    broker asks), QoS 1 by default. The broker away at the start or later does not stop the scoring: paho
    reconnects with back-off and sends the waiting message again (QoS 1: at least once)."""

    kind = "mqtt"

    def __init__(self, url: str, *, qos: int = 1, retain: bool = False, client_id: str | None = None,
                 timeout_s: float = 5.0, **options: Any):
        self.host, self.port, self.topic, tls, user, password = _mqtt_target(url)
        if qos not in (0, 1, 2):
            raise SinkError(f"qos must be 0, 1 or 2, not {qos!r}")
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise SinkError("an MQTT sink needs paho-mqtt: pip install paho-mqtt") from None
        self.qos, self.retain, self.timeout_s = qos, retain, timeout_s
        super().__init__(f"{'mqtts' if tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}", **options)
        self._acks = threading.Condition()
        self._acked: set[int] = set()
        self._connected = False
        self._link = "connecting"
        self._mqtt = mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        if user is not None:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set()
        # paho keeps each QoS>0 message until its PUBACK and sends it again after a reconnect: the sink publishes a
        # message once and waits for its acknowledgement, so a reconnect never makes a second copy.
        client.reconnect_delay_set(*self.retry_waits)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail, client.on_publish = self._on_connect_fail, self._on_publish
        try:
            client.connect_async(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as error:
            raise SinkError(f"cannot use the MQTT broker {self.host}:{self.port}: {_one_line(error)}") from None
        client.loop_start()
        self._client = client

    # paho's thread.

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._link_state(f"the broker refused the connection: {reason_code}", connected=False)
            return
        self._link_state("connected", connected=True)
        self._nudge.set()  # a message waiting out a back-off is looked at now

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._closing:
            self._link_state(f"connection lost ({reason_code})", connected=False)

    def _on_connect_fail(self, client, userdata) -> None:
        self._link_state("cannot connect", connected=False)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acks:
            self._acked.add(mid)
            self._acks.notify_all()

    def _link_state(self, state: str, connected: bool) -> None:
        with self._acks:
            was_connected, self._connected = self._connected, connected
            previous, self._link = self._link, state
            self._acks.notify_all()
        # A line when the link comes or goes, and when the first connection fails; not one per reconnect attempt,
        # and the first connection is no news.
        if connected != was_connected and previous != "connecting" or previous == "connecting" and not connected:
            self._say(f"broker {self.host}:{self.port}: {state}")

    # The sink's thread.

    def _message(self, scored: ScoredFrame) -> Any:
        return json.dumps(scored.record, ensure_ascii=False).encode("utf-8")

    def _send(self, message: _Message) -> None:
        if message.state is None:
            info = self._client.publish(self.topic, message.payload, qos=self.qos, retain=self.retain)
            # NO_CONN still leaves the message in paho's queue, sent on reconnect; only a refusal to queue it is
            # a reason to publish again.
            if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                raise OSError(f"paho could not queue the message (error {info.rc})")
            message.state = info.mid
        deadline = time.monotonic() + self.timeout_s
        with self._acks:
            while message.state not in self._acked and not self._abort.is_set():
                remaining = deadline - time.monotonic()
                # While the first connection is being made, wait for it; once the broker is known to be away, the
                # back-off waits instead (and a reconnect cuts it short).
                if (not self._connected and self._link != "connecting") or remaining <= 0:
                    why = self._link if not self._connected else f"no acknowledgement within {self.timeout_s:g} s"
                    raise OSError(f"not delivered yet: {why}")
                self._acks.wait(remaining)
            if message.state in self._acked:
                self._acked.discard(message.state)
                return
        raise OSError("closed before the broker acknowledged the message")

    def _interrupt(self) -> None:
        with self._acks:
            self._acks.notify_all()

    def _release(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _mqtt_target(url: str) -> tuple[str, int, str, bool, str | None, str | None]:
    """(host, port, topic, tls, user, password) of an MQTT URL; SinkError with one line when it is malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SinkError(f"an MQTT sink needs an mqtt://host:port/topic URL, not {url!r}")
    if not parts.hostname:
        raise SinkError(f"the MQTT URL {url!r} names no host (mqtt://host:port/topic)")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise SinkError(f"the MQTT URL {url!r} has a bad port") from None
    topic = unquote(parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else ""))
    if parts.fragment or url.endswith("#"):  # urlsplit takes "#" for a fragment's start
        topic += "#"
    if not topic:
        raise SinkError(f"the MQTT URL {url!r} names no topic (mqtt://host:port/topic)")
    if "+" in topic or "#" in topic:
        raise SinkError(f"the MQTT topic {topic!r} has a wildcard (+ or #): one cannot publish to it")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port, topic, parts.scheme == "mqtts", user, password


#: The forms `make_sink` reads, for its error message.
SINK_FORMS = "folder:DIR, csv:FILE, webhook:http(s)://…, mqtt://host:port/topic"


def make_sink(spec: str, *, every: str = "all", max_per_s: float | None = None, log: EventLog | None = None,
              **options: Any) -> Sink:
    """A sink from `KIND:TARGET` (`SINK_FORMS`); `options` go to its kind (headers, timeout_s, qos, retain…)."""
    spec = spec.strip()
    kind, colon, target = spec.partition(":")
    kind = kind.lower()
    if kind in ("mqtt", "mqtts"):
        # mqtt://host/topic as it is, or mqtt:mqtt://host/topic.
        kind, target = "mqtt", target if target.lower().startswith(("mqtt://", "mqtts://")) else spec
    elif kind in ("http", "https"):
        kind, target = "webhook", spec  # a bare URL is a webhook
    kinds: dict[str, type[QueuedSink]] = {"folder": FolderSink, "csv": CsvSink, "webhook": WebhookSink,
                                          "mqtt": MqttSink}
    if not colon or kind not in kinds:
        raise SinkError(f"unknown sink {spec!r}: use one of {SINK_FORMS}")
    if not target:
        raise SinkError(f"the sink {spec!r} names no target: use one of {SINK_FORMS}")
    sink_class = kinds[kind]
    accepted = {name for cls in sink_class.__mro__ if "__init__" in cls.__dict__
                for name in inspect.signature(cls.__init__).parameters} - {"self", "options"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SinkError(f"a {kind} sink takes no option {', '.join(unknown)}")
    return sink_class(target, every=every, max_per_s=max_per_s, log=log, **options)
