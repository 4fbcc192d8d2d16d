"""Live pipelines end to end on loopback, with a real model (PatchCore on the demo data): every scored frame's verdict
equals `predict`'s on the same image; a live source faster than the model drops frames (newest kept) and never
queues; a webhook and a real mosquitto broker each get exactly one message per scored frame that passes the filter;
a watched folder resumes; `inspection run` from flags and from a pipeline file; an unreachable source is one line and
exit code 2 within seconds; Ctrl-C-like stops are clean."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from app_testing import train_small_model
from conftest import REPO
from inspection.data.images import load_image_with_size
from inspection.errors import ParameterError
from inspection.live.loopback import Mosquitto, MqttCollector, WebhookReceiver, mosquitto_path
from inspection.live.mjpeg import MjpegServer
from inspection.live.spec import PipelineSpec, SinkSpec, build_pipeline, read_spec
from inspection.registry import load_model
from inspection.results.image import DISPLAY_MAX_SIDE


@pytest.fixture(scope="module")
def model_file(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("live-model") / "live.safetensors")


@pytest.fixture(scope="module")
def images(demo_root: Path) -> list[Path]:
    """The demo test images, good and defect."""
    return sorted((demo_root / "test").glob("*/*.png"))


@pytest.fixture(scope="module")
def predicted(model_file: Path, images: list[Path]) -> dict[str, str]:
    """`predict`'s verdict per image, keyed by the image's decoded pixels."""
    prediction = load_model(model_file).predict(images)
    verdicts = np.where(prediction.unlike_training, "unlike", np.where(prediction.verdicts, "defect", "good"))
    return {_key(load_image_with_size(path, max_side=DISPLAY_MAX_SIDE)[0]): str(verdict)
            for path, verdict in zip(images, verdicts)}


def _key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image).tobytes()


def _video(images: list[Path], path: Path, fps: float = 25.0) -> Path:
    """A lossless (FFV1) video of the images: each frame decodes to its PNG's pixels."""
    frames = [load_image_with_size(image)[0] for image in images]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def _scored_verdicts(pipeline) -> list[tuple[bytes, str]]:
    seen: list[tuple[bytes, str]] = []
    pipeline.on_scored.append(lambda scored: seen.append((_key(scored.frame.image), scored.record["verdict"])))
    return seen


def test_a_video_read_whole_gives_predicts_verdict_for_every_frame(model_file, images, predicted, tmp_path):
    video = _video(images, tmp_path / "line.mkv")
    spec = PipelineSpec(model=str(model_file), source=str(video), realtime=False,
                        sinks=[SinkSpec(f"folder:{tmp_path / 'out'}"), SinkSpec(f"csv:{tmp_path / 'v.csv'}")])
    pipeline = build_pipeline(spec)
    seen = _scored_verdicts(pipeline)
    status = pipeline.run()
    assert status.error is None and status.received == status.scored == len(images) and status.dropped == 0
    assert [verdict for _, verdict in seen] == [predicted[key] for key, _ in seen]
    assert {verdict for _, verdict in seen} >= {"good", "defect"}  # both kinds went through
    lines = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(images) and [record["live"]["index"] for record in records] == list(range(len(images)))
    assert records[0]["schema"] == "inspection-record/1" and records[0]["model"]["fingerprint"]
    assert len(list((tmp_path / "out").glob("*.png"))) == len(images)
    with open(tmp_path / "v.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(images)
    assert status.latency_ms["p99"] >= status.latency_ms["p50"] > 0


def test_a_stream_faster_than_the_model_drops_frames_and_keeps_the_newest(model_file, images, predicted):
    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(load_image_with_size(path)[0][:, :, ::-1]))[1].tobytes()
             for path in images]
    expected = {_key(load_image_with_size(jpeg, max_side=DISPLAY_MAX_SIDE)[0]) for jpeg in jpegs}
    with MjpegServer(jpegs, fps=200.0, loop=True) as stream:
        pipeline = build_pipeline(PipelineSpec(model=str(model_file), source=stream.url, max_seconds=3.0))
        seen = _scored_verdicts(pipeline)
        status = pipeline.run()
    assert status.error is None and status.scored >= 3
    # 200 frames/s is more than the model scores: most are dropped, and none wait in a queue.
    assert status.dropped > status.scored
    assert status.received - status.scored - status.dropped in (0, 1)  # at most the one frame in the slot
    assert all(key in expected for key, _ in seen)  # each scored frame is one of the served JPEGs, decoded whole


def test_webhook_and_mqtt_get_one_message_per_frame_that_passes_the_filter(model_file, images, tmp_path):
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; CI installs it)")
    video = _video(images, tmp_path / "line.mkv")
    with Mosquitto() as broker, WebhookReceiver() as receiver, \
            MqttCollector("127.0.0.1", broker.port, "line/verdicts") as collector:
        receiver.fail_for(1.5)  # the receiver answers 500 at first: the messages are retried, each arrives once
        spec = PipelineSpec(model=str(model_file), source=str(video), realtime=False,
                            sinks=[SinkSpec(f"webhook:{receiver.url}"),
                                   SinkSpec(broker.url("line/verdicts"), every="defects")])
        status = build_pipeline(spec).run()
        assert receiver.wait_for(status.scored, timeout=10)
        defects = sorted(record["live"]["index"] for record in receiver.received if record["verdict"] != "good")
        assert collector.wait_for(len(defects), timeout=10)
        time.sleep(0.5)  # nothing more may come
        webhook = sorted(record["live"]["index"] for record in receiver.received)
        mqtt = sorted(message["live"]["index"] for message in collector.received)
    assert receiver.failures >= 1 and status.sinks[0]["retries"] >= 1
    assert webhook == list(range(status.scored))  # every frame, once
    assert mqtt == defects and 0 < len(defects) < status.scored  # the defects, once


def test_a_watched_folder_scores_new_files_once_and_resumes(model_file, images, tmp_path):
    watched = tmp_path / "incoming"
    watched.mkdir()
    for image in images[:3]:
        (watched / image.name.replace(".png", f"-{image.parent.name}.png")).write_bytes(image.read_bytes())
    out = tmp_path / "out"
    spec = PipelineSpec(model=str(model_file), source=str(watched), sinks=[SinkSpec(f"folder:{out}")], max_frames=5)
    pipeline = build_pipeline(spec)
    pipeline.start()
    time.sleep(1.0)
    for image in images[3:6]:  # dropped while it runs
        (watched / image.name.replace(".png", f"-{image.parent.name}-late.png")).write_bytes(image.read_bytes())
    deadline = time.monotonic() + 60
    while pipeline.running and time.monotonic() < deadline:
        time.sleep(0.1)
    first = pipeline.stop()
    assert first.scored == 5 and first.dropped == 0
    # Started again with the same model: only the file not scored yet.
    again = build_pipeline(PipelineSpec(model=str(model_file), source=str(watched), sinks=[SinkSpec(f"folder:{out}")],
                                        max_seconds=3.0))
    status = again.run()
    assert status.scored == 1
    names = [json.loads(line)["file"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(names) == 6 and len(set(names)) == 6


def test_run_from_flags_and_from_a_pipeline_file(model_file, images, tmp_path):
    video = _video(images[:6], tmp_path / "line.mkv")
    done = subprocess.run([sys.executable, "-m", "inspection", "run", "--model", str(model_file), "--source",
                           str(video), "--as-fast-as-read", "--sink", f"csv:{tmp_path / 'flags.csv'}",
                           "--report", str(tmp_path / "report.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "6 received, 6 scored" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scored"] == 6 and report["sinks"][0]["sent"] == 6
    pipeline_file = tmp_path / "line.toml"
    pipeline_file.write_text(f'model = "{model_file}"\nmax_frames = 4\n\n[source]\nuri = "line.mkv"\nrealtime = false\n'
                             '\n[[sinks]]\ntarget = "csv:verdicts.csv"\nevery = "all"\n')
    done = subprocess.run([sys.executable, "-m", "inspection", "run", str(pipeline_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "verdicts.csv", newline="") as handle:  # relative to the pipeline file
        assert len(list(csv.DictReader(handle))) == 4


@pytest.mark.parametrize("source", ["usb:57", "http://127.0.0.1:{port}/stream.mjpg", "rtsp://127.0.0.1:{port}/x",
                                    "ftp://example/x", "no-such-video.mp4"])
def test_an_unreachable_source_is_one_line_and_exit_code_2(model_file, source, unused_port):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "inspection", "run", "--model", str(model_file), "--source",
                           source.format(port=unused_port)], cwd=REPO, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - started
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    # Within 5 s of trying: the source is opened before the model loads (the rest is Python's start).
    assert took < 15, took


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_pipeline_file_is_checked_key_by_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "m"\n[source]\nuri = "usb:0"\nfps = 3\n')
    with pytest.raises(ParameterError, match=r"unknown key\(s\) \['fps'\]"):
        read_spec(bad)
    bad.write_text('model = "m"\n[source]\nuri = "usb:0"\n[[sinks]]\ntarget = "csv:x.csv"\nevery = "some"\n')
    with pytest.raises(ParameterError, match="every must be one of"):
        read_spec(bad)
    bad.write_text('model = "m"\n[source\n')
    with pytest.raises(ParameterError, match="not a TOML pipeline file"):
        read_spec(bad)


def test_stop_ends_a_running_pipeline_cleanly(model_file, images):
    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(load_image_with_size(path)[0][:, :, ::-1]))[1].tobytes()
             for path in images[:4]]
    with MjpegServer(jpegs, fps=10.0, loop=True) as stream:
        pipeline = build_pipeline(PipelineSpec(model=str(model_file), source=stream.url))
        pipeline.open()
        pipeline.start()
        deadline = time.monotonic() + 30
        while pipeline.status().scored < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.perf_counter()
        status = pipeline.stop()
        assert time.perf_counter() - started < 5
    assert not status.running and status.error is None and status.scored >= 2
    assert any("ended" in event for event in status.events)


@pytest.mark.parametrize("signal_name,said", [("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM")])
def test_ctrl_c_stops_inspection_run_cleanly(signal_name, said, model_file, images, tmp_path):
    """SIGINT (Ctrl-C) or SIGTERM (a supervisor) while a stream is scored: the frame being scored is finished, the
    sinks are flushed, the counts are printed, exit code 0. The process starts with SIGINT ignored, as a shell starts
    a background job (`inspection run … &`): Python would leave it ignored."""
    import signal

    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(load_image_with_size(path)[0][:, :, ::-1]))[1].tobytes()
             for path in images[:4]]
    with MjpegServer(jpegs, fps=10.0, loop=True) as stream:
        # PYTHONFAULTHANDLER: should the process not end, SIGABRT makes it print every thread's stack.
        process = subprocess.Popen([sys.executable, "-m", "inspection", "run", "--model", str(model_file), "--source",
                                    stream.url, "--sink", f"csv:{tmp_path / 'v.csv'}", "--status-every", "0.5"],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until a status line says frames were scored
                line = process.stderr.readline()
                if " scored" in line and not line.startswith("0 received") and ", 0 scored" not in line:
                    break
            process.send_signal(getattr(signal, signal_name))
            try:
                out, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGABRT)
                out, err = process.communicate(timeout=30)
                pytest.fail(f"still running 30 s after {signal_name}; its stderr, with its threads' stacks:\n"
                            f"{err[-6000:]}")
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert f"stopping ({said})" in err and "Traceback" not in err
    scored = int(out.split(" received, ")[1].split(" scored")[0])
    with open(tmp_path / "v.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == scored >= 1
