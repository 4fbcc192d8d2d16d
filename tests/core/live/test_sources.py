"""The live sources with real files, a real lossless video and a real MJPEG server on loopback: frames decode as
predict decodes files, a video plays at its rate, a stream that drops is reconnected, a folder is watched."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.data.images import load_image_with_size
from inspection.live.frames import Frame, Source, SourceError
from inspection.live.mjpeg import MjpegServer, connect_mjpeg, read_mjpeg
from inspection.live.sources import (
    CameraSource,
    FolderSource,
    StreamSource,
    VideoFileSource,
    open_source,
    shrink_like_files,
)

#: Codecs OpenCV may write without loss, best first: (fourcc, file suffix).
LOSSLESS_CODECS = (("FFV1", ".mkv"), ("HFYU", ".avi"), ("PNG ", ".avi"))


def pictures(count: int = 4, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Small RGB pictures with fine detail (noise) and coarse structure (a moving square)."""
    rng = np.random.default_rng(7)
    result = []
    for index in range(count):
        picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture[8:24, 4 + 8 * index:20 + 8 * index] = (255, 0, 0)
        result.append(picture)
    return result


def write_lossless_video(path_stem: Path, frames: list[np.ndarray], fps: float) -> tuple[Path, str]:
    """The RGB frames as a lossless video, with the first codec of LOSSLESS_CODECS this OpenCV writes."""
    height, width = frames[0].shape[:2]
    for fourcc, suffix in LOSSLESS_CODECS:
        path = path_stem.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if not writer.isOpened():
            continue
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        writer.release()
        return path, fourcc
    pytest.fail("this OpenCV writes none of the lossless codecs")


def jpeg(picture: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def take(source: Source, count: int, *, within: float = 8.0, on_frame=None) -> list[Frame]:
    """The first `count` frames of an opened source (fails after `within` seconds)."""
    stop = threading.Event()
    watchdog = threading.Timer(within, stop.set)
    watchdog.start()
    frames: list[Frame] = []
    try:
        for frame in source.frames(stop):
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
            if len(frames) == count:
                break
    finally:
        watchdog.cancel()
        source.close()
    assert len(frames) == count, f"only {len(frames)} of {count} frames within {within} s"
    return frames


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------- video files


def test_a_lossless_video_gives_the_pngs_pixel_for_pixel(tmp_path):
    originals = pictures()
    for index, picture in enumerate(originals):
        cv2.imwrite(str(tmp_path / f"{index}.png"), picture[:, :, ::-1])
    video, fourcc = write_lossless_video(tmp_path / "clip", originals, fps=10)
    assert fourcc == "FFV1"  # the bench relies on it: say so when this OpenCV build changes

    source = open_source(str(video), realtime=False)
    assert isinstance(source, VideoFileSource) and not source.live
    source.open()
    assert source.fps == 10 and source.frame_count == 4
    frames = take(source, 4)
    for index, frame in enumerate(frames):
        expected, size = load_image_with_size(tmp_path / f"{index}.png")
        assert frame.image.dtype == np.uint8 and frame.image.flags.c_contiguous
        np.testing.assert_array_equal(frame.image, expected)
        assert (frame.index, frame.name, frame.original_size) == (index, f"frame-{index:06d}", size)


def test_a_video_plays_at_its_rate_when_realtime_and_at_once_when_not(tmp_path):
    video, _ = write_lossless_video(tmp_path / "clip", pictures(6), fps=20)
    source = open_source(str(video))  # realtime by default
    assert source.live
    source.open()
    frames = take(source, 6)
    played = frames[-1].received - frames[0].received
    assert 0.24 <= played < 0.6, played  # 5 intervals of 1/20 s
    assert all(b.received - a.received > 0.03 for a, b in zip(frames, frames[1:]))

    fast = open_source(str(video), realtime=False)
    fast.open()
    frames = take(fast, 6)
    assert frames[-1].received - frames[0].received < 0.2
    # The end of the file ends the source.
    again = open_source(str(video), realtime=False)
    again.open()
    assert len(list(again.frames(threading.Event()))) == 6


def test_large_frames_are_shrunk_exactly_as_predict_shrinks_the_file(tmp_path):
    big = pictures(1, height=150, width=330)[0]
    cv2.imwrite(str(tmp_path / "big.png"), big[:, :, ::-1])
    expected, size = load_image_with_size(tmp_path / "big.png", max_side=64)
    np.testing.assert_array_equal(shrink_like_files(big, 64), expected)
    np.testing.assert_array_equal(shrink_like_files(big, 100), load_image_with_size(tmp_path / "big.png",
                                                                                     max_side=100)[0])

    video, _ = write_lossless_video(tmp_path / "big", [big], fps=5)
    source = open_source(str(video), realtime=False, max_side=64)
    source.open()
    (frame,) = take(source, 1)
    assert frame.original_size == size == (150, 330)
    np.testing.assert_array_equal(frame.image, expected)


# --------------------------------------------------------------------------------------------------- MJPEG


@pytest.mark.parametrize(("content_length", "boundary"), [(True, "frame"), (False, "frame"), (False, "--cam")])
def test_mjpeg_parts_come_through_whole(content_length, boundary):
    jpegs = [jpeg(picture) for picture in pictures()]
    with MjpegServer(jpegs, fps=100, loop=False, content_length=content_length, boundary=boundary) as server:
        assert list(read_mjpeg(server.url)) == jpegs
        assert server.frames_sent == 4


def test_a_stream_gives_what_predict_gives_for_the_same_jpeg_bytes():
    jpegs = [jpeg(picture) for picture in pictures()]
    with MjpegServer(jpegs, fps=50) as server:
        source = open_source(server.url)
        assert isinstance(source, StreamSource) and source.live
        source.open()
        frames = take(source, 6)
    for index, frame in enumerate(frames):
        expected, size = load_image_with_size(jpegs[index % 4])
        np.testing.assert_array_equal(frame.image, expected)
        assert (frame.index, frame.name, frame.original_size) == (index, f"frame-{index:06d}", size)


def test_a_stream_that_drops_is_reconnected_and_the_gap_logged():
    jpegs = [jpeg(picture) for picture in pictures()]
    server = MjpegServer(jpegs, fps=20).start()
    port = server.port
    log: list[str] = []
    restarted: list[float] = []

    def camera_away_for_two_seconds(frame: Frame) -> None:
        if frame.index == 3:
            server.stop()
            timer = threading.Timer(2.0, lambda: (server.start(), restarted.append(time.perf_counter())))
            timer.start()

    try:
        source = open_source(server.url, log=log.append)
        source.open()
        frames = take(source, 8, within=9.0, on_frame=camera_away_for_two_seconds)
    finally:
        server.stop()
    assert server.port == port  # the same address came back
    assert source.reconnects == 1
    # One gap (a frame already on its way when the server stopped may still come in before it).
    gaps = [later.received - earlier.received for earlier, later in zip(frames, frames[1:])]
    (after,) = [index + 1 for index, gap in enumerate(gaps) if gap >= 1.9]
    assert after >= 4 and restarted and frames[after].received >= restarted[0]
    assert [frame.index for frame in frames] == list(range(8))
    assert len(log) == 2, log
    assert "dropped" in log[0] and "reconnecting" in log[0]
    gap = float(re.search(r"back after ([\d.]+) s", log[1]).group(1))
    assert gap >= 1.9


def test_stop_ends_a_stream_that_waits_for_its_next_frame_at_once():
    with MjpegServer([jpeg(pictures(1)[0])], fps=0.2) as server:  # the next frame is 5 s away
        source = open_source(server.url)
        source.open()
        stop = threading.Event()
        frames = source.frames(stop)
        assert next(frames).index == 0
        threading.Timer(0.2, stop.set).start()
        started = time.perf_counter()
        assert list(frames) == []
        assert time.perf_counter() - started < 1.0
        source.close()


def test_mjpeg_errors_name_the_url_and_what_came_back():
    with MjpegServer([jpeg(pictures(1)[0])]) as server:
        with pytest.raises(SourceError, match=r"/elsewhere: the server answered 404 Not Found"):
            connect_mjpeg(server.url.replace("/stream.mjpg", "/elsewhere"))

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"<html>a login page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    page = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{page.server_address[1]}/"
        with pytest.raises(SourceError) as caught:
            open_source(url).open()
        message = str(caught.value)
        assert message.startswith(url) and "text/html" in message and "multipart" in message
        assert "\n" not in message
    finally:
        page.shutdown()
        page.server_close()


def test_a_wrong_url_and_a_missing_camera_fail_at_open_within_seconds():
    for uri in (f"http://127.0.0.1:{closed_port()}/stream.mjpg", "usb:57"):
        if uri == "usb:57" and os.path.exists("/dev/video57"):
            continue
        source = open_source(uri)
        assert isinstance(source, (StreamSource, CameraSource))
        started = time.perf_counter()
        with pytest.raises(SourceError) as caught:
            source.open()
        assert time.perf_counter() - started < 5
        assert str(caught.value).startswith(uri) and "\n" not in str(caught.value)


def test_an_rtsp_server_that_never_answers_times_out_at_open():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never speaks
    try:
        source = open_source(f"rtsp://127.0.0.1:{silent.getsockname()[1]}/live", timeout=1.0)
        started = time.perf_counter()
        with pytest.raises(SourceError, match="rtsp://127.0.0.1"):
            source.open()
        assert time.perf_counter() - started < 3
    finally:
        silent.close()


def test_what_source_may_be_is_said_for_anything_else(tmp_path):
    for uri in ("ftp://host/clip.mp4", str(tmp_path / "missing.mp4"), "usb:one", ""):
        with pytest.raises(SourceError, match="SOURCE may be a video file, usb:N"):
            open_source(uri)
    cv2.imwrite(str(tmp_path / "one.png"), pictures(1)[0])
    with pytest.raises(SourceError, match="one image, not a video"):
        open_source(str(tmp_path / "one.png"))
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="not a video OpenCV can read"):
        open_source(str(tmp_path / "clip.mp4")).open()
    with pytest.raises(SourceError, match="no such folder"):
        FolderSource(tmp_path / "gone").open()


# --------------------------------------------------------------------------------------------------- folders


def _write_png(path: Path, picture: np.ndarray) -> None:
    cv2.imwrite(str(path), picture[:, :, ::-1])


def _write_slowly(path: Path, data: bytes, pieces: int, pause: float) -> None:
    """A file written in pieces, as a slow copy writes it."""
    step = -(-len(data) // pieces)
    with open(path, "wb") as file:
        for start in range(0, len(data), step):
            file.write(data[start:start + step])
            file.flush()
            time.sleep(pause)


def test_a_folder_gives_what_is_there_then_what_arrives_each_once(tmp_path):
    small = pictures(3)
    _write_png(tmp_path / "a.png", small[0])
    _write_png(tmp_path / "b.png", small[1])
    _write_png(tmp_path / "done.png", small[2])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of a picture")
    (tmp_path / "notes.txt").write_text("not an image")
    log: list[str] = []
    source = open_source(str(tmp_path), poll_s=0.1, skip={"done.png"}, log=log.append)
    assert isinstance(source, FolderSource) and not source.live
    source.open()

    def drop_files_while_reading(frame: Frame) -> None:
        if frame.name == "b.png":
            _write_png(tmp_path / "c.png", small[0])
            _write_png(tmp_path / ".d.part.png", small[2])
            os.replace(tmp_path / ".d.part.png", tmp_path / "d.png")  # the atomic way
            os.utime(tmp_path / "a.png")  # changed after it was read: still read once

    frames = take(source, 4, on_frame=drop_files_while_reading)
    assert [frame.name for frame in frames] == ["a.png", "b.png", "c.png", "d.png"]
    assert [frame.index for frame in frames] == [0, 1, 2, 3]
    for frame in frames:
        assert frame.path == str(tmp_path / frame.name)
        np.testing.assert_array_equal(frame.image, load_image_with_size(tmp_path / frame.name)[0])
    assert source.unreadable == 1
    assert len(log) == 1 and "bad.png" in log[0] and "\n" not in log[0]
    assert {"a.png", "b.png", "bad.png", "c.png", "d.png", "done.png"} <= source.done


def test_a_folder_read_once_ends_and_a_slow_file_is_not_read_half_written(tmp_path):
    _write_png(tmp_path / "b.png", pictures(1)[0])
    source = FolderSource(tmp_path, poll_s=0.15, watch=False)
    assert [frame.name for frame in _all(source)] == ["b.png"]

    # A file that grows more slowly than one poll is read when complete, not half-way.
    large = pictures(1, height=300, width=300)[0]
    data = cv2.imencode(".png", large[:, :, ::-1])[1].tobytes()
    log: list[str] = []
    watched = FolderSource(tmp_path, poll_s=0.25, skip={"b.png"}, log=log.append)
    writer = threading.Thread(target=_write_slowly, args=(tmp_path / "slow.png", data, 8, 0.08))
    writer.start()
    (frame,) = take(watched, 1)
    writer.join()
    assert frame.name == "slow.png" and not log
    np.testing.assert_array_equal(frame.image, large)


def _all(source: Source) -> Iterator[Frame]:
    source.open()
    yield from source.frames(threading.Event())
