"""Live pipelines on loopback (issue 24): bottle test images (good and defect) as a 10 frames/s source — a lossless
video file played at its rate, an MJPEG stream on a loopback port, and files dropped into a watched folder — scored
by a bottle PatchCore, the verdicts sent to a webhook (every frame) and to MQTT through a real mosquitto broker
(defects only). For each source: the verdict of every scored frame against `predict`'s verdict on the same image
(the PNG for the video, the served JPEG bytes for the stream, the dropped file for the folder), sustained frames/s,
frames dropped because the model was busy, the pipeline's latency per frame (p50, p99: from the frame's arrival to
its verdict), and whether each sink received exactly one message per scored frame that passes its filter. Then the
faults: the stream server stopped for 5 s and restarted, the webhook answering 500 for a while, and an unknown
camera and wrong URLs given to `inspection run`. Writes results.json and results.md into --out (default bench/live).

    python bench/live.py [--model M] [--fps 10] [--out bench/live]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from serve import fit_bottle, shared_dir  # bench/serve.py, beside this script: the same bottle PatchCore

from inspection.bench.run import environment_record
from inspection.data.images import load_image_with_size
from inspection.live.loopback import Mosquitto, MqttCollector, WebhookReceiver
from inspection.live.mjpeg import MjpegServer
from inspection.live.sources import FOLDER_POLL_S
from inspection.live.spec import PipelineSpec, SinkSpec, build_pipeline
from inspection.results.image import DISPLAY_MAX_SIDE

REPO = Path(__file__).resolve().parents[1]
JPEG_QUALITY = 95


def pixels_key(image: np.ndarray) -> str:
    """A frame's identity: the hash of its decoded pixels (a frame from the video or the stream is matched to the
    image it was made from by what it shows, whatever its index)."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def predict_verdicts(model: Path, files: list[Path], out: Path) -> dict[str, str]:
    """`inspection predict` on the files: file name → verdict."""
    folder = out / "images"
    folder.mkdir(parents=True)
    for file in files:
        os.link(file, folder / file.name) if file.stat().st_dev == folder.stat().st_dev else shutil.copy(file, folder)
    done = subprocess.run([sys.executable, "-m", "inspection", "--quiet", "predict", "--model", str(model),
                           str(folder), "--out", str(out / "predict"), "--overlays", "none"],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr)
    with open(out / "predict" / "predictions.csv", newline="") as handle:
        return {row["file"]: row["verdict"] for row in csv.DictReader(handle)}


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """A lossless video (FFV1), so that each decoded frame equals its PNG pixel for pixel."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("this OpenCV cannot write FFV1 video")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_source(name: str, source: str, model: Path, expected: dict[str, str], identify: Callable[[Any], str],
               broker: Mosquitto, *, feeder: Any = None, max_seconds: float = 120.0,
               webhook_fail_s: float = 0.0, interruption: Any = None,
               dropped_at: dict[str, float] | None = None) -> dict[str, Any]:
    """One source through the pipeline with a webhook sink (every frame) and an MQTT sink (defects only);
    `identify(scored_frame)` names the file a frame shows, whose `predict` verdict it must equal."""
    topic = f"bench/{name.replace(' ', '-')}"
    with WebhookReceiver() as receiver:
        collector = MqttCollector("127.0.0.1", broker.port, topic)
        if webhook_fail_s:
            receiver.fail_until(time.monotonic() + webhook_fail_s)
        spec = PipelineSpec(model=str(model), source=source, max_seconds=max_seconds,
                            sinks=[SinkSpec(f"webhook:{receiver.url}"), SinkSpec(broker.url(topic), every="defects")])
        events: list[str] = []
        pipeline = build_pipeline(spec, log=events.append)
        frame_file: dict[int, str] = {}
        since_drop: list[float] = []  # a folder's: from the file's arrival in the folder to its verdict (ms)

        def note(scored: Any) -> None:
            frame_file[scored.record["live"]["index"]] = identify(scored)
            if dropped_at is not None:
                since_drop.append((time.time() - dropped_at[scored.frame.name]) * 1000)

        pipeline.on_scored.append(note)
        pipeline.open()
        pipeline.start()
        helpers = [threading.Thread(target=task, daemon=True) for task in (feeder, interruption) if task]
        for helper in helpers:
            helper.start()
        while pipeline.running:
            time.sleep(0.1)
        for helper in helpers:
            helper.join(30)
        status = pipeline.stop()
        scored = [record for record in receiver.received]
        defects = [record for record in scored if record["verdict"] != "good"]
        collector.wait_for(len(defects), timeout=10)
        mqtt = list(collector.received)
        collector.close()
    agree = [expected.get(frame_file.get(record["live"]["index"], ""), "?") == record["verdict"] for record in scored]
    webhook_indexes = [record["live"]["index"] for record in scored]
    mqtt_indexes = [message["live"]["index"] for message in mqtt]
    return {
        "source": name, "received": status.received, "scored": status.scored,
        "dropped (model busy)": status.dropped, "failed": status.failed,
        "verdicts equal to predict": f"{sum(agree)}/{len(agree)}", "all verdicts equal": all(agree) and bool(agree),
        "frames/s": round(status.frames_per_s, 2), "latency p50 ms": round(status.latency_ms["p50"], 1),
        "latency p99 ms": round(status.latency_ms["p99"], 1),
        "webhook messages": len(scored), "webhook exactly once": sorted(webhook_indexes) == sorted(
            set(webhook_indexes)) and len(scored) == status.scored,
        "webhook 500s answered": receiver.failures, "webhook retries": status.sinks[0]["retries"],
        "mqtt messages (defects)": len(mqtt), "mqtt exactly once": sorted(mqtt_indexes) == sorted(
            record["live"]["index"] for record in defects),
        "from arrival in the folder p50 ms": round(float(np.percentile(since_drop, 50)), 1) if since_drop else None,
        "from arrival in the folder p99 ms": round(float(np.percentile(since_drop, 99)), 1) if since_drop else None,
        "reconnects": status.reconnects, "events": [event for event in events if "reconnect" in event or "gap" in
                                                    event or "dropped" in event or "back" in event][:10],
    }


def unreachable(model: Path, sources: dict[str, str]) -> list[dict[str, Any]]:
    """`inspection run` on sources that cannot be reached: exit code, the one line, how long it took."""
    rows = []
    for name, source in sources.items():
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "inspection", "run", "--model", str(model), "--source", source],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        opened = next((line for line in lines if line.startswith("error:")), "")
        rows.append({"source": name, "exit code": done.returncode, "stderr lines": len(lines), "message": opened,
                     "seconds (whole command)": round(time.perf_counter() - started, 2)})
    return rows


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def markdown(results: dict[str, Any]) -> str:
    runs, faults = results["runs"], results["unreachable"]
    lines = [f"# Live pipelines (bottle PatchCore, {results['frames']} test images at {results['fps']:g} frames/s)", "",
             "| source | received | scored | dropped (busy) | verdicts = predict | frames/s | latency p50 ms | "
             "latency p99 ms | webhook msgs (each once) | MQTT defect msgs (each once) | reconnects | "
             "webhook 500s / retries |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['source']} | {run['received']} | {run['scored']} | {run['dropped (model busy)']} | "
                     f"{run['verdicts equal to predict']} | {run['frames/s']} | {run['latency p50 ms']} | "
                     f"{run['latency p99 ms']} | {run['webhook messages']} ({_yes(run['webhook exactly once'])}) | "
                     f"{run['mqtt messages (defects)']} ({_yes(run['mqtt exactly once'])}) | {run['reconnects']} | "
                     f"{run['webhook 500s answered']} / {run['webhook retries']} |")
    for run in runs:
        if run["from arrival in the folder p50 ms"] is not None:
            lines += ["", f"{run['source']}: from a file's arrival in the folder to its verdict (the folder is listed "
                          f"every {FOLDER_POLL_S:g} s; a file is read once nothing was written to it for that long), "
                          f"p50 {run['from arrival in the folder p50 ms']} ms, p99 "
                          f"{run['from arrival in the folder p99 ms']} ms."]
    lines += ["", "## Sources that cannot be reached (`inspection run --source …`)", "",
              "| source | exit code | lines on stderr | seconds (the whole command) | message |",
              "|---|---|---|---|---|"]
    for row in faults:
        lines.append(f"| {row['source']} | {row['exit code']} | {row['stderr lines']} | "
                     f"{row['seconds (whole command)']} | {row['message']} |")
    environment = results["environment"]
    lines += ["", f"{environment['date']}, {environment['machine']}, {environment['cpu_threads']} CPU threads, torch "
                  f"{environment['torch']}, inspection {environment['inspection']}."]
    return "\n".join(lines) + "\n"


def summary_markdown(results: dict[str, Any]) -> str:
    """The runs' main columns (the README's table)."""
    lines = ["| source | scored | dropped (busy) | verdicts = predict | frames/s | latency p50 / p99 ms | sinks once |",
             "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        once = run["webhook exactly once"] and run["mqtt exactly once"]
        lines.append(f"| {run['source']} | {run['scored']} | {run['dropped (model busy)']} | "
                     f"{run['verdicts equal to predict']} | {run['frames/s']} | {run['latency p50 ms']:.0f} / "
                     f"{run['latency p99 ms']:.0f} | {_yes(once)} |")
    return "\n".join(lines) + "\n"


def unreachable_markdown(results: dict[str, Any]) -> str:
    """The faults' table alone (the docs show it under the runs' table)."""
    text = markdown(results)
    return text[text.index("| source | exit code"):text.index("\n\n", text.index("| source | exit code"))] + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a bottle model file (default: fit a PatchCore on bottle)")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "live"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="inspection-live-bench-"))
    try:
        model = Path(args.model) if args.model else fit_bottle(work)
        from inspection.data.datasets import open_dataset

        dataset = open_dataset(shared_dir() / "data" / "mvtec_ad", "bottle")
        samples = list(dataset.test)
        # Good and defect images interleaved, as a line would see them.
        samples.sort(key=lambda sample: hashlib.sha256(sample.path.name.encode() + sample.defect_type.encode())
                     .hexdigest())
        pngs, jpegs = work / "png", work / "jpeg"
        pngs.mkdir()
        jpegs.mkdir()
        pictures, jpeg_frames = [], []
        for number, sample in enumerate(samples):
            name = f"{number:03d}-{sample.defect_type}-{sample.path.stem}"
            shutil.copy(sample.path, pngs / f"{name}.png")
            image, _ = load_image_with_size(pngs / f"{name}.png", max_side=DISPLAY_MAX_SIDE)
            pictures.append(image)
            buffer = io.BytesIO()
            Image.open(sample.path).convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
            (jpegs / f"{name}.jpg").write_bytes(buffer.getvalue())
            jpeg_frames.append(buffer.getvalue())
        print("predict on the PNG and JPEG files …", file=sys.stderr, flush=True)
        expected = predict_verdicts(model, sorted(pngs.iterdir()), work / "predict-png")
        expected.update(predict_verdicts(model, sorted(jpegs.iterdir()), work / "predict-jpeg"))
        video = write_video(pictures, work / "bottle-test.mkv", args.fps)
        broker = Mosquitto().start()
        runs = []
        try:
            # Frames from the video and the stream are named frame-NNNNNN: match each to its file by its pixels.
            by_pixels = {pixels_key(image): f"{name}.png" for image, name in
                         zip(pictures, (path.stem for path in sorted(pngs.iterdir())))}
            by_pixels.update({pixels_key(load_image_with_size(data, max_side=DISPLAY_MAX_SIDE)[0]): path.name
                              for data, path in zip(jpeg_frames, sorted(jpegs.iterdir()))})

            def by_content(scored: Any) -> str:
                return by_pixels.get(pixels_key(scored.frame.image), "")

            seconds = len(samples) / args.fps
            runs.append(run_source("video file (FFV1, played at 10 fps)", str(video), model, expected, by_content,
                                   broker, max_seconds=seconds + 30))
            # The stream loops (a camera does not end); the pipeline stops after one pass's time.
            with MjpegServer(jpeg_frames, fps=args.fps, loop=True) as stream:
                runs.append(run_source("MJPEG stream (loopback), webhook 500 for 3 s", stream.url, model, expected,
                                       by_content, broker, max_seconds=seconds, webhook_fail_s=3.0))
            # Faster than the model scores: the newest frame is scored, the ones in between dropped and counted.
            with MjpegServer(jpeg_frames, fps=3 * args.fps, loop=True) as stream:
                runs.append(run_source(f"MJPEG stream at {3 * args.fps:g} fps (faster than the model)", stream.url,
                                       model, expected, by_content, broker, max_seconds=seconds))
            with MjpegServer(jpeg_frames, fps=args.fps, loop=True) as stream:
                def interrupt() -> None:
                    time.sleep(3)
                    stream.stop()
                    time.sleep(5)
                    stream.start()
                runs.append(run_source("MJPEG stream, server stopped 5 s", stream.url, model, expected, by_content,
                                       broker, max_seconds=20, interruption=interrupt))
            watched = work / "watched"
            watched.mkdir()
            dropped_at: dict[str, float] = {}

            def drop_files() -> None:
                for path in sorted(pngs.iterdir()):
                    shutil.copy(path, watched / f".{path.name}.part")
                    os.replace(watched / f".{path.name}.part", watched / path.name)
                    dropped_at[path.name] = time.time()
                    time.sleep(1 / args.fps)

            runs.append(run_source("folder (files dropped at 10/s)", str(watched), model, expected,
                                   lambda scored: scored.frame.name, broker, feeder=drop_files,
                                   max_seconds=seconds + 40, dropped_at=dropped_at))
        finally:
            broker.close()
        closed = free_port()
        faults = unreachable(model, {"usb:57 (no such camera)": "usb:57",
                                     "http:// on a closed port": f"http://127.0.0.1:{closed}/stream.mjpg",
                                     "rtsp:// on a closed port": f"rtsp://127.0.0.1:{closed}/stream",
                                     "a missing file": str(work / "no-such-video.mp4")})
        results = {"frames": len(samples), "fps": args.fps, "runs": runs, "unreachable": faults,
                   "environment": environment_record()}
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown(results))
        (out / "unreachable.md").write_text(unreachable_markdown(results))
        (out / "summary.md").write_text(summary_markdown(results))
        print(markdown(results))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
