"""The live pipeline's sinks against real far sides on the loopback: a folder, a CSV file, a webhook receiver that
fails on purpose, a mosquitto broker that is stopped and restarted. Messages are real records
(`results.record.inspection_record` of a stub model's prediction), and each check counts what arrived: exactly
once, none lost, none repeated."""

from __future__ import annotations

import csv
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from inspection.live.frames import Frame, ScoredFrame, SinkError
from inspection.live.loopback import Mosquitto, MqttCollector, WebhookReceiver, free_port, mosquitto_path
from inspection.live.sinks import CSV_COLUMNS, QueuedSink, make_sink

#: Short waits between tries, so that a test sees several retries in a second.
FAST = (0.05, 0.4)
FINGERPRINT = "0123456789abcdef"
#: The longest one `offer` may take: it queues and returns (a blocked one would wait out a back-off or a timeout).
OFFER_S = 0.2


class _StubScorer:
    """What `inspection_record` reads of a model: a name, a fingerprint, a calibration, its creation."""

    name, runtime, fingerprint = "stub", "torch", FINGERPRINT

    def __init__(self) -> None:
        from inspection.data.preprocess import Preprocessing
        from inspection.model.calibration import Calibration
        from inspection.model.header import ModelInfo

        self.preprocessing = Preprocessing(mode="full", resize=32, crop=32, multiple=8)
        maps = np.random.default_rng(0).random((21, 32, 32), dtype=np.float32)
        self.calibration = Calibration.from_good(np.linspace(1.0, 2.0, 21), maps, 0.05, 0.05)
        self.info = ModelInfo(created="2024-01-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def scored_results():
    """A good and a defect result of one 48×64 picture, with their records (real ones, by `inspection_record`)."""
    from inspection.model.prediction import Prediction
    from inspection.results.image import image_result
    from inspection.results.record import inspection_record

    scorer = _StubScorer()
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    made = {}
    for verdict, raw_score in (("good", 0.5), ("defect", 10.0)):
        raw_map = np.zeros((1, 32, 32), np.float32)
        if verdict == "defect":
            raw_map[0, 8:20, 8:20] = 5.0  # one square region
        prediction = Prediction(raw_map, np.array([raw_score]), [scorer.preprocessing.geometry(48, 64)],
                                scorer.calibration)
        result = image_result(prediction, 0, image, "part.png")
        record = inspection_record(result, scorer, {"decode": 1.0, "score": 2.0, "total": 3.5}, "stub")
        assert record["verdict"] == verdict
        made[verdict] = (result, record)
    return made


@pytest.fixture
def frames(scored_results):
    """`frames(verdicts)`: ScoredFrames numbered from `start`, one per verdict, with the pipeline's `live` fields."""

    def make(verdicts: str | list[str], start: int = 0) -> list[ScoredFrame]:
        verdicts = [verdicts] if isinstance(verdicts, str) else verdicts
        made = []
        for index, verdict in enumerate(verdicts, start):
            result, record = scored_results[verdict]
            frame = Frame(image=result.image, original_size=(48, 64), name=f"frame-{index:06d}", index=index)
            live = {"source": "test", "index": index,
                    "captured_at": datetime.fromtimestamp(frame.timestamp, timezone.utc).isoformat()}
            made.append(ScoredFrame(frame, {**record, "file": frame.name, "live": live}, result))
        return made

    return make


def _until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _offer_all(sink, scored: list[ScoredFrame]) -> float:
    """Offer each; the longest one offer took (seconds)."""
    longest = 0.0
    for item in scored:
        began = time.perf_counter()
        sink.offer(item)
        longest = max(longest, time.perf_counter() - began)
    return longest


def _indices(bodies) -> list[int]:
    return sorted(body["live"]["index"] for body in bodies)


# Folder and CSV.


def test_folder_sink_writes_an_overlay_and_a_json_line_per_frame(tmp_path, frames):
    target = tmp_path / "out" / "verdicts"
    sink = make_sink(f"folder:{target}")
    assert _offer_all(sink, frames(["good", "defect", "good"])) < OFFER_S
    sink.close()
    lines = [json.loads(line) for line in (target / "records.jsonl").read_text().splitlines()]
    assert [line["verdict"] for line in lines] == ["good", "defect", "good"]
    assert [line["live"]["index"] for line in lines] == [0, 1, 2]
    pngs = sorted(path.name for path in target.glob("*.png"))
    assert pngs == sorted(line["overlay"] for line in lines) == [f"frame-{i:06d}-{i:06d}.png" for i in range(3)]
    assert (target / pngs[1]).read_bytes().startswith(b"\x89PNG")
    assert not list(target.glob(".*"))  # no partial file or write test left behind
    assert sink.health().as_dict() | {"target": None} == {
        "kind": "folder", "target": None, "sent": 3, "filtered": 0, "dropped": 0, "retries": 0, "pending": 0,
        "last_error": None, "healthy": True}

    again = make_sink(f"folder:{target}")  # a second run from index 0: new names, nothing overwritten
    again.offer(frames("good")[0])
    again.close()
    assert len(list(target.glob("*.png"))) == 4 and (target / "frame-000000-000000-2.png").is_file()


def test_csv_sink_writes_its_header_once_across_reopening(tmp_path, frames):
    file = tmp_path / "verdicts.csv"
    for batch in (frames(["good", "defect"]), frames(["defect"], start=2)):
        sink = make_sink(f"csv:{file}")
        _offer_all(sink, batch)
        sink.close()
    with open(file, newline="") as text:
        rows = list(csv.reader(text))
    assert rows[0] == list(CSV_COLUMNS) and len(rows) == 4 and list(CSV_COLUMNS) not in rows[1:]
    row = dict(zip(CSV_COLUMNS, rows[2]))
    assert row["frame"] == "frame-000001" and row["verdict"] == "defect" and float(row["score"]) > 0.5
    assert row["regions"] == "1" and int(row["largest_region_area"]) > 0 and float(row["latency_ms"]) == 3.5
    assert row["model_fingerprint"] == FINGERPRINT and float(row["threshold"]) == 0.5

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(SinkError, match="other columns"):
        make_sink(f"csv:{other}")


# What every sink shares: the filter, the rate limit, the bounded queue.


def test_defects_only_sends_defects(tmp_path, frames):
    sink = make_sink(f"csv:{tmp_path / 'defects.csv'}", every="defects")
    accepted = [sink.offer(item) for item in frames(["good", "defect", "good", "defect", "good"])]
    sink.close()
    assert accepted == [False, True, False, True, False]
    health = sink.health()
    assert (health.sent, health.filtered) == (2, 3)
    rows = (tmp_path / "defects.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["frame-000001", "frame-000003"]


def test_the_rate_limit_leaves_frames_out(tmp_path, frames):
    sink = make_sink(f"csv:{tmp_path / 'limited.csv'}", max_per_s=2)
    first = [sink.offer(item) for item in frames(["good"] * 10)]
    time.sleep(0.6)  # one more token
    later = [sink.offer(item) for item in frames(["good"] * 3, start=10)]
    sink.close()
    assert first == [True, True] + [False] * 8  # a burst of one second's worth, then the rate
    assert later == [True, False, False]
    assert (sink.health().sent, sink.health().filtered, sink.health().dropped) == (3, 10, 0)


class _HeldSink(QueuedSink):
    """A sink whose first send waits for `release`: its queue fills meanwhile."""

    kind = "held"

    def __init__(self, **options) -> None:
        super().__init__("held", **options)
        self.entered, self.release = threading.Event(), threading.Event()
        self.delivered: list[int] = []

    def _send(self, message) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self.delivered.append(message.index)


def test_a_full_queue_drops_the_oldest_and_offer_never_waits(frames):
    sink = _HeldSink(queue_size=3)
    scored = frames(["good"] * 11)
    sink.offer(scored[0])
    assert sink.entered.wait(5)  # frame 0 is being sent
    assert _offer_all(sink, scored[1:]) < OFFER_S
    assert sink.health().pending == 4 and sink.health().dropped == 7
    sink.release.set()
    sink.close()
    assert sink.delivered == [0, 8, 9, 10]
    assert (sink.health().sent, sink.health().dropped, sink.health().pending) == (4, 7, 0)


# Webhooks.


def test_a_failing_webhook_gets_every_message_exactly_once(frames):
    lines: list[str] = []
    with WebhookReceiver() as receiver:
        receiver.fail_for(1.0)
        sink = make_sink(f"webhook:{receiver.url}", log=lines.append, retry_waits=FAST,
                         headers={"Authorization": "Bearer secret"})
        assert _offer_all(sink, frames(["good", "defect"] * 5)) < OFFER_S
        assert receiver.wait_for(10, timeout=8)
        sink.close()
        time.sleep(0.1)
    assert _indices(receiver.received) == list(range(10))  # none lost, none twice
    assert len(set(receiver.keys)) == 10 and all(key.startswith(FINGERPRINT) for key in receiver.keys)
    health = sink.health()
    assert health.sent == 10 and health.healthy and health.retries == receiver.failures >= 3
    assert "HTTP 500" in health.last_error
    assert len(lines) == 2 and "failing" in lines[0] and "delivering again" in lines[1]  # no line per retry
    assert not any("secret" in line for line in lines)


def test_a_webhook_that_is_down_does_not_block_and_is_delivered_to_once_it_is_up(frames):
    port = free_port()
    lines: list[str] = []
    sink = make_sink(f"webhook:http://127.0.0.1:{port}/hook", log=lines.append, retry_waits=FAST)
    assert _offer_all(sink, frames(["defect"] * 5)) < OFFER_S
    assert _until(lambda: not sink.health().healthy, 5)
    health = sink.health()
    assert health.last_error and health.pending == 5 and health.sent == 0
    time.sleep(0.5)
    with WebhookReceiver(port=port) as receiver:
        assert receiver.wait_for(5, timeout=5)
        sink.close()
    assert _indices(receiver.received) == list(range(5))
    assert sink.health().healthy and sink.health().retries >= 2 and len(lines) == 2


def test_a_webhook_refusing_a_message_drops_it_and_goes_on(frames):
    with WebhookReceiver(fail_status=400) as receiver:
        lines: list[str] = []
        sink = make_sink(receiver.url, log=lines.append, retry_waits=FAST)
        receiver.fail_next(2)
        _offer_all(sink, frames(["good"] * 4))
        assert receiver.wait_for(2, timeout=5)
        sink.close()
    assert _indices(receiver.received) == [2, 3]
    assert (sink.health().sent, sink.health().dropped, sink.health().retries) == (2, 2, 0)
    assert len(lines) == 2 and "HTTP 400" in lines[0]  # one line for two refusals, one for the recovery


def test_closing_a_sink_whose_far_side_is_down_keeps_to_the_timeout(frames):
    sink = make_sink(f"webhook:http://127.0.0.1:{free_port()}/hook", retry_waits=FAST)
    _offer_all(sink, frames(["good"] * 3))
    began = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - began < 2.0
    health = sink.health()
    assert (health.sent, health.dropped, health.pending) == (0, 3, 0) and not health.healthy
    assert sink.offer(frames("good")[0]) is False


# MQTT, against Debian's mosquitto.

needs_mosquitto = pytest.mark.skipif(mosquitto_path() is None,
                                     reason="mosquitto is not installed (apt-get install mosquitto)")


@needs_mosquitto
def test_mqtt_sends_one_message_per_frame_that_passes_the_filter(frames):
    with Mosquitto() as broker, MqttCollector("127.0.0.1", broker.port, "line1/verdicts") as collector:
        sink = make_sink(broker.url("line1/verdicts"), every="defects", retry_waits=FAST)
        _offer_all(sink, frames(["good", "defect", "defect", "good", "defect"]))
        assert collector.wait_for(3, timeout=5)
        sink.close()
        time.sleep(0.2)  # a repeat would have arrived by now
    assert _indices(collector.received) == [1, 2, 4]
    assert collector.received[0]["schema"] == "inspection-record/1"
    assert (sink.health().sent, sink.health().filtered, sink.health().retries) == (3, 2, 0)


@needs_mosquitto
def test_mqtt_messages_published_while_the_broker_is_away_arrive_once_after_it_is_back(frames):
    lines: list[str] = []
    # Persistence keeps the collector's session across the restart, so that it misses nothing while it reconnects.
    with Mosquitto(persistence=True) as broker, \
            MqttCollector("127.0.0.1", broker.port, "line1/verdicts", session="test-collector") as collector:
        sink = make_sink(f"mqtt:{broker.url('line1/verdicts')}", log=lines.append, retry_waits=FAST)
        _offer_all(sink, frames(["defect"] * 3))
        assert collector.wait_for(3, timeout=5)
        time.sleep(0.3)  # the collector's acknowledgements reach the broker before it stops (else it sends again)
        broker.stop()
        assert _offer_all(sink, frames(["defect"] * 3, start=3)) < OFFER_S
        assert _until(lambda: not sink.health().healthy, 3)
        time.sleep(1.8)  # the broker is away for about 2 s
        assert sink.health().pending == 3 and sink.health().sent == 3
        broker.start()
        assert collector.wait_for(6, timeout=10)
        sink.close()
        time.sleep(0.3)
    assert _indices(collector.received) == list(range(6))
    health = sink.health()
    assert health.sent == 6 and health.healthy and health.retries >= 1 and health.dropped == 0
    # One line each: the link lost, delivery failing, the link back, delivery back; none per retry.
    assert len(lines) == 4, lines
    said = " | ".join(lines)  # paho's thread and the sink's say theirs in either order
    assert all(words in said for words in ("connection lost", "failing", ": connected", "delivering again"))


@needs_mosquitto
def test_mqtt_with_no_broker_at_the_start_delivers_once_one_is_there(frames):
    port = free_port()
    sink = make_sink(f"mqtt://127.0.0.1:{port}/late", retry_waits=FAST)
    assert _offer_all(sink, frames(["good"] * 2)) < OFFER_S
    assert _until(lambda: not sink.health().healthy, 3) and sink.health().last_error
    with Mosquitto(port=port) as broker, MqttCollector("127.0.0.1", broker.port, "late") as collector:
        assert _until(lambda: sink.health().sent == 2, 8)
        sink.offer(frames("good", start=2)[0])
        assert _until(lambda: 2 in _indices(collector.received), 5)
        sink.close()
        time.sleep(0.2)
    # Frames 0 and 1 reach the collector only if it subscribed before the sink sent them; none twice.
    indices = _indices(collector.received)
    assert 2 in indices and set(indices) <= {0, 1, 2} and len(set(indices)) == len(indices)
    assert sink.health().sent == 3 and sink.health().healthy


# Targets that cannot work are said before the pipeline starts, in one line.


@pytest.mark.parametrize("spec, words", [
    ("printer:lp0", "unknown sink"),
    ("nothing", "unknown sink"),
    ("csv:", "names no target"),
    ("webhook:ftp://example.com/hook", "http:// or https://"),
    ("webhook:http://127.0.0.1:99999/hook", "bad port"),
    ("mqtt://127.0.0.1:1883", "names no topic"),
    ("mqtt://127.0.0.1:1883/", "names no topic"),
    ("mqtt://127.0.0.1:port/topic", "bad port"),
    ("mqtt:mqtt:///topic", "names no host"),
    ("mqtt://127.0.0.1/line/#", "wildcard"),
])
def test_bad_targets_are_refused_in_one_line(spec, words):
    with pytest.raises(SinkError, match=words) as raised:
        make_sink(spec)
    assert "\n" not in str(raised.value)


def test_unwritable_targets_and_wrong_options_are_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SinkError, match="is a file"):
        make_sink(f"folder:{blocker}")
    with pytest.raises(SinkError, match="cannot be written"):
        make_sink(f"folder:{blocker / 'below'}")
    with pytest.raises(SinkError, match="is a folder"):
        make_sink(f"csv:{tmp_path}")
    with pytest.raises(SinkError, match="takes no option qos"):
        make_sink(f"csv:{tmp_path / 'x.csv'}", qos=1)
    with pytest.raises(SinkError, match="every must be"):
        make_sink(f"csv:{tmp_path / 'x.csv'}", every="some")
    with pytest.raises(SinkError, match="max_per_s"):
        make_sink(f"csv:{tmp_path / 'x.csv'}", max_per_s=0)
    assert isinstance(make_sink(f"folder:{tmp_path / 'new' / 'deep'}"), QueuedSink)
    assert Path(tmp_path / "new" / "deep").is_dir()
