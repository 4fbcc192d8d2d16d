"""The HTTP service under load: `inspection serve` with a bottle PatchCore on a free loopback port, N requests (real
bottle test images, multipart) at concurrency C — errors, p50 / p99 latency, throughput, and the service process's
peak memory (VmRSS sampled every 20 ms) over the first 100 and the last 100 requests — then bad requests (corrupt,
empty, huge, wrong type, no token, wrong token), each of which must get its 4xx while the service keeps answering.
Writes results.json and results.md into --out (default bench/serve).

    python bench/serve.py [--model M] [--requests 1000] [--concurrency 4] [--bad 100] [--out bench/serve]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from inspection.bench.run import environment_record
from inspection.service.limits import DEFAULT_MAX_MB, DEFAULT_QUEUE, DEFAULT_WORKERS, MB, TOKEN_ENV

REPO = Path(__file__).resolve().parents[1]
#: Requests at the start and at the end whose peak memory is compared (smaller runs: half of them each).
WINDOW = 100
#: The bad requests and the status each must get.
BAD_KINDS = {"corrupt": 400, "empty": 400, "huge": 413, "wrong type": 415, "no token": 401, "wrong token": 401}


def shared_dir() -> Path:
    return Path(os.environ.get("INSPECTION_SHARED", REPO.parent / "shared"))


def fit_bottle(folder: Path) -> Path:
    """A PatchCore at its defaults fitted on MVTec AD bottle's good training images."""
    from inspection.data.datasets import open_dataset
    from inspection.registry import create_model

    dataset = open_dataset(shared_dir() / "data" / "mvtec_ad", "bottle")
    print("fitting PatchCore on bottle …", file=sys.stderr, flush=True)
    return create_model("patchcore").fit([sample.path for sample in dataset.train]).save(folder / "bottle.safetensors")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (KiB) from /proc: VmRSS now, or VmHWM (its peak so far)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


class MemorySampler(threading.Thread):
    """Samples the service's VmRSS every `interval` seconds, each sample tagged with the requests done by then."""

    def __init__(self, pid: int, done: list[int], interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.done, self.interval = pid, done, interval
        self.samples: list[tuple[int, int]] = []  # (requests done, KiB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((self.done[0], rss_kib(self.pid)))
            time.sleep(self.interval)

    def peak_mib(self, low: int, high: int) -> float:
        """The peak while between `low` and `high` requests were done."""
        return max((kib for done, kib in self.samples if low <= done < high), default=0) / 1024


def start_service(model: Path, token: str) -> tuple[subprocess.Popen, str]:
    environment = {**os.environ, TOKEN_ENV: token}
    process = subprocess.Popen([sys.executable, "-m", "inspection", "--quiet", "serve", "--model", str(model),
                                "--port", "0"], cwd=REPO, env=environment, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        raise RuntimeError(f"the service did not start: {line!r}")
    print(line.strip(), file=sys.stderr, flush=True)
    return process, line.split(" at ", 1)[1].split(" ", 1)[0]


def load(url: str, token: str, images: list[tuple[str, bytes]], requests: int, concurrency: int,
         done: list[int]) -> dict[str, Any]:
    """`requests` good requests from `concurrency` clients: latencies, errors, verdicts, throughput."""
    latencies = np.zeros(requests)
    errors: list[str] = []
    verdicts: Counter[str] = Counter()
    next_index = [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as session:
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= requests:
                    return
                name, data = images[index % len(images)]
                started = time.perf_counter()
                try:
                    response = session.post("/v1/inspect", files={"image": (name, data, "image/png")})
                    ok = response.status_code == 200
                    reason = "" if ok else f"{name}: {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, reason = False, f"{name}: {type(error).__name__} {error}"
                latencies[index] = (time.perf_counter() - started) * 1000
                with lock:
                    done[0] += 1
                    if ok:
                        verdicts[response.json()["verdict"]] += 1
                    else:
                        errors.append(reason)

    started = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    seconds = time.perf_counter() - started
    return {"requests": requests, "concurrency": concurrency, "errors": len(errors), "error_examples": errors[:5],
            "seconds": round(seconds, 2), "throughput_per_s": round(requests / seconds, 2),
            "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 1),
                           "p90": round(float(np.percentile(latencies, 90)), 1),
                           "p99": round(float(np.percentile(latencies, 99)), 1),
                           "max": round(float(latencies.max()), 1)},
            "verdicts": dict(verdicts)}


def bad_requests(url: str, token: str, count: int, good: bytes) -> dict[str, Any]:
    """`count` bad requests, the kinds in turn: how many got the status they should, per kind; then whether the
    service still answers (health, and a good image scored)."""
    huge = b"\0" * (int(DEFAULT_MAX_MB * MB) + MB)
    authorised = {"Authorization": f"Bearer {token}"}
    requests = {"corrupt": ({"content": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8}, "image/png", authorised),
                "empty": ({"content": b""}, "image/png", authorised),
                "huge": ({"content": huge}, "image/png", authorised),
                "wrong type": ({"content": b"a text file, not an image\n" * 40}, "text/plain", authorised),
                "no token": ({"content": good}, "image/png", {}),
                "wrong token": ({"content": good}, "image/png", {"Authorization": "Bearer not-the-token"})}
    tally: dict[str, dict[str, Any]] = {kind: {"expected": status, "sent": 0, "right": 0, "one_line": 0, "got": {}}
                                        for kind, status in BAD_KINDS.items()}
    kinds = list(BAD_KINDS)
    with httpx.Client(base_url=url, timeout=120) as session:
        for index in range(count):
            kind = kinds[index % len(kinds)]
            body, media_type, headers = requests[kind]
            row = tally[kind]
            row["sent"] += 1
            try:
                response = session.post("/v1/inspect", headers={"Content-Type": media_type, **headers}, **body)
                status = str(response.status_code)
                line = response.json().get("error", "") if response.headers.get("content-type", "").startswith(
                    "application/json") else ""
                row["one_line"] += bool(line) and "\n" not in line and "Traceback" not in line
            except httpx.HTTPError as error:
                status = type(error).__name__
            row["got"][status] = row["got"].get(status, 0) + 1
            row["right"] += status == str(row["expected"])
        health = session.get("/v1/health").status_code
        after = session.post("/v1/inspect", content=good, headers={"Content-Type": "image/png", **authorised})
    return {"kinds": tally, "sent": count, "right": sum(row["right"] for row in tally.values()),
            "health_after": health, "good_after": after.status_code,
            "verdict_after": after.json().get("verdict") if after.status_code == 200 else None}


def markdown(result: dict[str, Any]) -> str:
    run, memory, bad = result["load"], result["memory"], result["bad"]
    latency = run["latency_ms"]
    lines = [f"Service: `inspection serve` ({result['model']}), workers {result['workers']}, queue {result['queue']}, "
             f"on loopback; {run['requests']} requests at concurrency {run['concurrency']} (real bottle test images, "
             "multipart).", "",
             "| requests | errors | p50 ms | p90 ms | p99 ms | max ms | throughput /s |",
             "|---|---|---|---|---|---|---|",
             f"| {run['requests']} | {run['errors']} | {latency['p50']} | {latency['p90']} | {latency['p99']} | "
             f"{latency['max']} | {run['throughput_per_s']} |", "",
             f"Service memory (VmRSS, MiB): at start {memory['start_mib']:.0f}; peak over the first "
             f"{memory['window']} requests {memory['first_mib']:.0f}, over the last {memory['window']} "
             f"{memory['last_mib']:.0f} ({memory['growth_mib']:+.1f}); peak of the whole run (VmHWM) "
             f"{memory['hwm_mib']:.0f}.", "",
             "| bad request | sent | expected | right | one-line JSON | got |", "|---|---|---|---|---|---|"]
    lines += [f"| {kind} | {row['sent']} | {row['expected']} | {row['right']} | {row['one_line']} | "
              f"{', '.join(f'{status}×{times}' for status, times in row['got'].items())} |"
              for kind, row in bad["kinds"].items()]
    environment = result["environment"]
    lines += ["", f"After the bad requests: health {bad['health_after']}, a good image {bad['good_after']} "
              f"({bad['verdict_after']}).", "",
              f"Measured {environment['date']} with inspection {environment['inspection']}, torch "
              f"{environment['torch']}, {os.cpu_count()} CPUs (client and service on the same machine), load "
              f"{result['load_average_1min']:.2f} at the end.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a bottle model file or exported folder (default: fit one)")
    parser.add_argument("--requests", type=int, default=1000, help="good requests (default 1000)")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once (default 4)")
    parser.add_argument("--bad", type=int, default=100, help="bad requests (default 100)")
    parser.add_argument("--out", default=str(REPO / "bench" / "serve"), help="where the results go")
    args = parser.parse_args()
    if args.requests < 2 or args.concurrency < 1 or args.bad < 0:
        parser.error("--requests must be at least 2, --concurrency at least 1, --bad at least 0")
    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    token = secrets.token_urlsafe(24)
    process = None
    try:
        model = Path(args.model) if args.model else fit_bottle(scratch)
        test = shared_dir() / "data" / "mvtec_ad" / "bottle" / "test"
        images = [(f"{path.parent.name}/{path.name}", path.read_bytes()) for path in sorted(test.glob("*/*.png"))]
        process, url = start_service(model, token)
        done = [0]
        sampler = MemorySampler(process.pid, done)
        start_mib = rss_kib(process.pid) / 1024
        sampler.start()
        print(f"{args.requests} requests at concurrency {args.concurrency} …", file=sys.stderr, flush=True)
        run = load(url, token, images, args.requests, args.concurrency, done)
        sampler.stop.set()
        sampler.join()
        window = min(WINDOW, args.requests // 2)
        first, last = sampler.peak_mib(0, window), sampler.peak_mib(args.requests - window, args.requests + 1)
        memory = {"window": window, "start_mib": round(start_mib, 1), "first_mib": round(first, 1),
                  "last_mib": round(last, 1), "growth_mib": round(last - first, 1),
                  "hwm_mib": round(rss_kib(process.pid, "VmHWM") / 1024, 1), "samples": len(sampler.samples)}
        print(f"{args.bad} bad requests …", file=sys.stderr, flush=True)
        good = next(data for name, data in images if name.startswith("good/"))
        bad = bad_requests(url, token, args.bad, good)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"environment": environment_record(), "load_average_1min": os.getloadavg()[0],
              "model": Path(args.model).name if args.model else "PatchCore at its defaults fitted on bottle",
              "workers": DEFAULT_WORKERS, "queue": DEFAULT_QUEUE, "load": run, "memory": memory, "bad": bad}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    failed = run["errors"] or bad["right"] != bad["sent"] or bad["health_after"] != 200 or bad["good_after"] != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
