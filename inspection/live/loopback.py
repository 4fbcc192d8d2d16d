"""Local servers the bench and the tests start, on 127.0.0.1 only: a webhook receiver that can be told to fail, a
mosquitto broker on a free port that can be stopped and restarted, and an MQTT subscriber that collects what
arrives. Nothing here dedupes: each message counted is one that arrived, so a test can check "exactly once"."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Where Debian's package puts the broker.
MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


class WebhookReceiver:
    """A threaded HTTP server recording each POSTed JSON body (`received`, with its `Idempotency-Key` in `keys`);
    it answers 500 (`fail_status`) while `failing` is set, for the next `fail_next(n)` requests, or until
    `fail_until(t)` (time.monotonic()), counting those answers in `failures`."""

    def __init__(self, port: int = 0, fail_status: int = 500):
        self.requested_port = port
        self.fail_status = fail_status
        self.failing = False
        self.received: list[Any] = []
        self.keys: list[str | None] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._fail_count = 0
        self._fail_until = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def fail_next(self, count: int) -> None:
        """Answer the next `count` requests with `fail_status`."""
        with self._lock:
            self._fail_count = count

    def fail_until(self, moment: float) -> None:
        """Answer `fail_status` until time.monotonic() reaches `moment`."""
        with self._lock:
            self._fail_until = moment

    def fail_for(self, seconds: float) -> None:
        self.fail_until(time.monotonic() + seconds)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Whether `count` bodies have arrived within `timeout` seconds."""
        return _wait_until(lambda: len(self.received) >= count, timeout)

    def _should_fail(self) -> bool:
        with self._lock:
            if self._fail_count > 0:
                self._fail_count -= 1
                fail = True
            else:
                fail = self.failing or time.monotonic() < self._fail_until
            if fail:
                self.failures += 1
            return fail

    def _record(self, body: Any, key: str | None) -> None:
        with self._lock:
            self.received.append(body)
            self.keys.append(key)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver._should_fail():
                    self._answer(receiver.fail_status, b'{"error": "failing on purpose"}')
                    return
                try:
                    parsed = json.loads(body)
                except ValueError:
                    self._answer(400, b'{"error": "not JSON"}')
                    return
                receiver._record(parsed, self.headers.get("Idempotency-Key"))
                self._answer(200, b'{"ok": true}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the counts instead
                pass

        server = ThreadingHTTPServer((HOST, self.requested_port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_path() -> str | None:
    """The mosquitto broker's executable: Debian's, or one on PATH; None when it is not installed."""
    if Path(MOSQUITTO).is_file():
        return MOSQUITTO
    return shutil.which("mosquitto")


class Mosquitto:
    """A mosquitto broker on a free 127.0.0.1 port with a minimal config of its own (anonymous; `persistence`
    off unless asked, in a temporary folder); `stop` and `restart` keep the port."""

    def __init__(self, port: int = 0, persistence: bool = False, start_timeout: float = 10.0):
        executable = mosquitto_path()
        if executable is None:
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.executable = executable
        self.port = port or free_port()
        self.persistence = persistence
        self.start_timeout = start_timeout
        self._folder = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._process: subprocess.Popen | None = None

    def url(self, topic: str) -> str:
        return f"mqtt://{HOST}:{self.port}/{topic}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config(self) -> Path:
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", f"persistence {str(self.persistence).lower()}",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to its own user, which cannot write this root-owned temporary folder.
            lines.append("user root")
        if self.persistence:
            # Written when the broker stops, reloaded when it starts: a persistent subscriber's session survives.
            lines += [f"persistence_location {self._folder}/", "autosave_interval 1"]
        config = self._folder / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Mosquitto:
        if self.running:
            return self
        log = self._folder / "mosquitto.log"
        with open(log, "ab") as output:
            self._process = subprocess.Popen([self.executable, "-c", str(self._config())], stdout=output,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def accepting() -> bool:
            if not self.running:
                return True  # exited: said below
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        ready = _wait_until(accepting, self.start_timeout, step=0.02)
        if not self.running or not ready:
            self.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"mosquitto did not start on port {self.port} within {self.start_timeout:g} s: "
                               + " / ".join(tail))
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop it and remove its folder."""
        self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class MqttCollector:
    """Subscribes to `topic` (QoS 1) and keeps each payload that arrives, parsed as JSON (`received`). With a
    `session` name the broker keeps its subscription and queues messages while it is away (a persistent
    session), so nothing is missed across a broker restart with persistence."""

    def __init__(self, host: str, port: int, topic: str, session: str | None = None, timeout: float = 10.0):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as error:
            raise RuntimeError("paho-mqtt is not installed: pip install paho-mqtt") from error
        self.topic = topic
        self.received: list[Any] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "",
                             clean_session=session is None)
        client.reconnect_delay_set(0.05, 0.5)  # a collector back quickly misses less

        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            if not reason_code.is_failure:
                client.subscribe(topic, qos=1)  # again after each reconnect: a fresh broker knows no one

        def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
            self._subscribed.set()

        def on_message(client, userdata, message) -> None:
            try:
                payload = json.loads(message.payload)
            except ValueError:
                payload = message.payload
            with self._lock:
                self.received.append(payload)

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect_async(host, port, keepalive=10)
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"could not subscribe to {topic!r} on {host}:{port} within {timeout:g} s")

    def wait_for(self, count: int, timeout: float) -> bool:
        """Whether `count` messages have arrived within `timeout` seconds."""
        return _wait_until(lambda: len(self.received) >= count, timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
