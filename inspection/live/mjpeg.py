"""MJPEG over HTTP, both ends, with the standard library only: `connect_mjpeg` / `read_mjpeg` read a
`multipart/x-mixed-replace` stream (what IP cameras and many streaming tools serve) part by part, and `MjpegServer`
serves a list of JPEG files as such a stream on loopback — the "camera" of the bench, the tests and demos.

The client speaks HTTP/1.0 over a plain socket rather than through `http.client`: it must wait for data in short
slices (to notice `stop` and a silent server within seconds) and `http.client`'s buffered socket cannot be read
again once a read has timed out."""

from __future__ import annotations

import base64
import http.client
import io
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urljoin, urlsplit

from .frames import OPEN_TIMEOUT_S, SourceError

#: The largest part (one JPEG) or header block accepted, so that a stream that never sends a boundary cannot fill
#: the memory.
MAX_PART_BYTES = 64 * 1024 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_MAX_REDIRECTS = 3
#: How often a wait for data looks at `stop` (seconds).
_POLL_S = 0.1
_CHUNK = 64 * 1024


class _StreamEnded(Exception):
    """The server closed the connection."""


# --------------------------------------------------------------------------------------------------- the client


class _Reader:
    """A receive buffer over a socket: waits for data in `_POLL_S` slices so that `stop` is seen quickly, and gives
    up (SourceError) when the server has sent nothing for `timeout` seconds."""

    def __init__(self, sock: socket.socket, url: str, timeout: float, stop: threading.Event | None):
        self.sock, self.url, self.timeout, self.stop = sock, url, timeout, stop
        self.buffer = bytearray()

    def _fill(self, deadline: float | None = None) -> bool:
        """Receive more bytes; False when `stop` was set. Raises _StreamEnded at the end of the stream."""
        silent_until = time.monotonic() + self.timeout
        limit = silent_until if deadline is None else min(deadline, silent_until)
        while True:
            if self.stop is not None and self.stop.is_set():
                return False
            # TLS may hold decrypted bytes that select() cannot see.
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            if not pending:
                left = limit - time.monotonic()
                if left <= 0:
                    raise SourceError(f"{self.url}: no data from the server for {self.timeout:g} s")
                try:
                    ready, _, _ = select.select([self.sock], [], [], min(_POLL_S, left))
                except (OSError, ValueError) as error:  # closed by close() from another thread
                    raise _StreamEnded(str(error)) from None
                if not ready:
                    continue
            try:
                data = self.sock.recv(_CHUNK)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except (OSError, ValueError) as error:
                raise SourceError(f"{self.url}: connection lost ({error})") from None
            if not data:
                raise _StreamEnded("the server closed the connection")
            self.buffer += data
            return True

    def read_until(self, delimiter: bytes, limit: int, deadline: float | None = None) -> bytes | None:
        """The bytes up to and including the first `delimiter` (None when `stop` was set)."""
        start = 0
        while True:
            found = self.buffer.find(delimiter, start)
            if found >= 0:
                end = found + len(delimiter)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise SourceError(f"{self.url}: no {delimiter!r} within {limit:,} bytes: not an MJPEG stream")
            start = max(0, len(self.buffer) - len(delimiter) + 1)  # search only the new bytes next time
            if not self._fill(deadline):
                return None

    def read_exact(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            if not self._fill():
                return None
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


class MjpegConnection:
    """One open MJPEG stream (the response headers read, the parts not yet): iterate `parts()`, then `close()`."""

    def __init__(self, url: str, sock: socket.socket, reader: _Reader, boundary: str):
        self.url, self.boundary = url, boundary
        self._sock, self._reader = sock, reader

    def parts(self, stop: threading.Event | None = None) -> Iterator[bytes]:
        """Each part's bytes (a JPEG) until the stream ends (the generator returns) or `stop` (this one, else the
        one given to connect) is set. A server that goes silent for `timeout` seconds or a connection error raises
        SourceError. Parts may come with or without a Content-Length."""
        reader = self._reader
        if stop is not None:
            reader.stop = stop
        # Cameras differ on whether the declared boundary already carries the leading "--": look for its core.
        delimiter = b"--" + self.boundary.lstrip("-").encode("latin-1")
        at_part = False  # True when the delimiter before the next part has just been read
        try:
            while True:
                if not at_part and reader.read_until(delimiter, MAX_PART_BYTES) is None:
                    return
                rest = reader.read_until(b"\n", _MAX_HEADER_BYTES)
                if rest is None or rest.startswith(b"--"):
                    return  # stopped, or the closing delimiter "--boundary--"
                headers = self._part_headers()
                if headers is None:
                    return
                length = _content_length(headers)
                if length is not None:
                    body = reader.read_exact(length)
                    at_part = False
                else:  # the part runs up to the next delimiter, less the line break before it
                    body = reader.read_until(delimiter, MAX_PART_BYTES)
                    if body is not None:
                        body = body[: -len(delimiter)].rstrip(b"-").removesuffix(b"\n").removesuffix(b"\r")
                    at_part = True
                if body is None:
                    return
                if body:
                    yield body
        except _StreamEnded:
            return

    def _part_headers(self) -> list[bytes] | None:
        """A part's header lines, up to the blank line before its body (None when stopped)."""
        lines: list[bytes] = []
        while True:
            line = self._reader.read_until(b"\n", _MAX_HEADER_BYTES)
            if line is None:
                return None
            if not line.strip():
                return lines
            lines.append(line)
            if len(lines) > 100:
                raise SourceError(f"{self.url}: a part with more than 100 header lines: not an MJPEG stream")

    def close(self) -> None:
        """Close the connection; a `parts()` waiting in another thread then ends."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> MjpegConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _content_length(headers: list[bytes]) -> int | None:
    """The part's Content-Length, or None when it has none (or a value that cannot be right)."""
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            return length if 0 <= length <= MAX_PART_BYTES else None
    return None


def _request(url: str, timeout: float, stop: threading.Event | None) -> tuple[socket.socket, _Reader,
                                                                                 http.client.HTTPMessage, int, str]:
    """Connect, send a GET and read the status line and headers, all within `timeout` seconds."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{url}: not an http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise SourceError(f"{url}: the port is not a number from 0 to 65535") from None
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
    except socket.gaierror:
        raise SourceError(f"{url}: unknown host {parts.hostname!r}") from None
    except TimeoutError:
        raise SourceError(f"{url}: no answer within {timeout:g} s") from None
    except OSError as error:
        raise SourceError(f"{url}: cannot connect ({error.strerror or error})") from None
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.0", f"Host: {parts.netloc.rpartition('@')[2]}",
                 "User-Agent: inspection-live", "Accept: multipart/x-mixed-replace, */*", "Connection: close"]
        if parts.username is not None:  # http://user:password@camera/ — the usual way IP cameras take a login
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            lines.append(f"Authorization: Basic {base64.b64encode(login).decode('ascii')}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = _Reader(sock, url, timeout, stop)
        head = reader.read_until(b"\r\n\r\n", _MAX_HEADER_BYTES, deadline)
        if head is None:
            raise SourceError(f"{url}: stopped while connecting")
        status_line, _, header_block = head.partition(b"\r\n")
        fields = status_line.decode("latin-1").split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise SourceError(f"{url}: the server did not answer in HTTP ({status_line[:60]!r})")
        headers = http.client.parse_headers(io.BytesIO(header_block))
        return sock, reader, headers, int(fields[1]), fields[2].strip() if len(fields) > 2 else ""
    except _StreamEnded:
        sock.close()
        raise SourceError(f"{url}: the server closed the connection without answering") from None
    except ssl.SSLError as error:
        sock.close()
        raise SourceError(f"{url}: TLS failed ({error.reason or error})") from None
    except TimeoutError:
        sock.close()
        raise SourceError(f"{url}: no answer within {timeout:g} s") from None
    except OSError as error:
        sock.close()
        if isinstance(error, SourceError):
            raise
        raise SourceError(f"{url}: connection failed ({error.strerror or error})") from None


def connect_mjpeg(url: str, timeout: float = OPEN_TIMEOUT_S, stop: threading.Event | None = None) -> MjpegConnection:
    """Open an MJPEG stream: SourceError with one line naming the URL and what came back (no answer, an HTTP
    error, a content type that is not multipart) within about `timeout` seconds. Redirects are followed."""
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        sock, reader, headers, status, reason = _request(current, timeout, stop)
        if status in (301, 302, 303, 307, 308) and headers.get("Location"):
            sock.close()
            current = urljoin(current, headers["Location"])
            continue
        if status != 200:
            sock.close()
            hint = " (a login is needed: http://user:password@host/...)" if status == 401 else ""
            raise SourceError(f"{url}: the server answered {status} {reason}{hint}".rstrip())
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            sock.close()  # not allowed in an answer to HTTP/1.0, which is what we ask in
            raise SourceError(f"{url}: the server sent a chunked answer to an HTTP/1.0 request: not supported")
        content_type = headers.get_content_type()
        boundary = headers.get_param("boundary")
        if not content_type.startswith("multipart/"):
            sock.close()
            raise SourceError(f"{url}: the server sent {headers.get('Content-Type') or 'no content type'}, not an "
                              "MJPEG stream (multipart/x-mixed-replace)")
        if not isinstance(boundary, str) or not boundary.strip("-"):
            sock.close()
            raise SourceError(f"{url}: the multipart stream declares no boundary")
        return MjpegConnection(url, sock, reader, boundary)
    raise SourceError(f"{url}: more than {_MAX_REDIRECTS} redirects")


def read_mjpeg(url: str, stop: threading.Event | None = None, timeout: float = OPEN_TIMEOUT_S) -> Iterator[bytes]:
    """Each JPEG of the MJPEG stream at `url` until it ends or `stop` is set (connects on the first `next`)."""
    with connect_mjpeg(url, timeout, stop) as connection:
        yield from connection.parts()


# --------------------------------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = 10  # a client that connects and sends no request is let go

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        owner = self.server.owner
        if self.path.split("?", 1)[0] != owner.path:
            self.send_error(404, "Not Found", f"the stream is at {owner.path}")
            return
        stopping = self.server.stopping
        self.server.track(self.connection, True)
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={owner.boundary}")
            self.send_header("Cache-Control", "no-cache, no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            period = 1.0 / owner.fps
            due = time.monotonic()
            index = 0
            while not stopping.is_set():
                if index == len(owner.jpegs):
                    if not owner.loop:
                        self.wfile.write(f"--{owner.boundary}--\r\n".encode("ascii"))
                        break
                    index = 0
                jpeg = owner.jpegs[index]
                length = f"Content-Length: {len(jpeg)}\r\n" if owner.content_length else ""
                self.wfile.write(f"--{owner.boundary}\r\nContent-Type: image/jpeg\r\n{length}\r\n".encode("ascii")
                                 + jpeg + b"\r\n")
                self.wfile.flush()
                owner._count_sent()
                index += 1
                # A client that reads slowly gets the next frame when it can, not a burst of late ones.
                due = max(due + period, time.monotonic())
                if stopping.wait(max(0.0, due - time.monotonic())):
                    break
        except OSError:
            pass  # the client went away, or stop() closed the connection
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass  # a test camera is quiet


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while the old connections are in TIME_WAIT

    def __init__(self, address: tuple[str, int], owner: MjpegServer):
        self.owner = owner
        self.stopping = threading.Event()
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host name up (getfqdn), which can hang where no name server answers.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, connection: socket.socket, live: bool) -> None:
        with self._lock:
            (self._live.add if live else self._live.discard)(connection)

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)

    def drop_all(self) -> None:
        """Cut every streaming connection, so that clients see the stream drop (not just end politely)."""
        with self._lock:
            connections = list(self._live)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MjpegServer:
    """Serves `jpegs` (encoded JPEG files) as an MJPEG stream at `fps` frames a second on loopback, to any number of
    clients, each getting the list from its first JPEG; `loop=False` ends each client's stream after the last one.
    `port=0` takes a free port; after `stop()` (which also cuts the live connections) `start()` listens on the same
    port again, so a client can be shown a camera that goes away and comes back."""

    def __init__(self, jpegs: Sequence[bytes], fps: float = 10.0, *, loop: bool = True, host: str = "127.0.0.1",
                 port: int = 0, path: str = "/stream.mjpg", boundary: str = "frame", content_length: bool = True):
        if not jpegs:
            raise ValueError("MjpegServer needs at least one JPEG")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.jpegs = [bytes(jpeg) for jpeg in jpegs]
        self.fps, self.loop, self.host, self.port = float(fps), loop, host, port
        self.path = path if path.startswith("/") else f"/{path}"
        self.boundary = boundary
        self.content_length = content_length  # False: parts without Content-Length, as some cameras send
        self._frames_sent = 0
        self._count_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The stream's address (the port is known once started)."""
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def frames_sent(self) -> int:
        """JPEGs written to clients since this object was made (over all clients and restarts)."""
        with self._count_lock:
            return self._frames_sent

    @property
    def clients(self) -> int:
        """Connections being streamed to now."""
        return self._server.live_count() if self._server is not None else 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def _count_sent(self) -> None:
        with self._count_lock:
            self._frames_sent += 1

    def start(self) -> MjpegServer:
        """Listen (on the same port as before after a `stop()`) and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"mjpeg-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every live connection; `start()` may follow."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        server.drop_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
