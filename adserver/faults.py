"""Fault injection for the chaos runs: kill or pause a process, start it again exactly as it was, cut a link.

``processes.py`` starts and stops processes politely. A fault run also needs the impolite half: SIGKILL and
SIGSTOP, and then the *same* process back: same argv, environment, ports and data directories, so that
clients holding URLs and tokens, and the data on disk, find it where they left it. It also needs a network
link it can cut: ``tc netem`` and Toxiproxy are unavailable on these machines (ARCHITECTURE §6), so
``TcpProxy`` is a small userspace TCP proxy between two processes that can drop the link and bring it back.

Only processes this program started are ever signalled (they are ``Proc`` objects from our own
``ProcessGroup``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from adserver.processes import Proc, ProcessGroup, free_port, nats_server_binary, wait_tcp


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How a process was started, so it can be started again identically after a crash."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


def process_env(pid: int) -> dict[str, str]:
    """The environment a child of ours was started with (Linux /proc). Reading it back, rather than
    rebuilding it, keeps a restart identical even when the code that started the process adds variables."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def capture(proc: Proc) -> LaunchSpec:
    """Record argv and environment of a running child (call before any fault: /proc forgets the dead)."""
    argv = proc.popen.args
    if isinstance(argv, str | bytes | os.PathLike):
        raise TypeError(f"{proc.name} was started from a shell string; cannot restart it reliably")
    return LaunchSpec(proc.name, tuple(str(a) for a in argv), process_env(proc.popen.pid))


def relaunch(group: ProcessGroup, old: Proc, spec: LaunchSpec, generation: int) -> Proc:
    """Start ``spec`` again and put the new process where ``old`` was in the group.

    Keeping the position keeps the group's stop order (edges first, NATS last): appending a restarted
    nats-server would stop it first and make every edge wait out its drain timeout. The new process logs to
    ``<name>.<generation>.log`` so the crashed process's log survives for the report.
    """
    if old.alive():
        raise RuntimeError(f"{old.name} is still running; kill it before relaunching")
    new = group.start(f"{spec.name}.{generation}", list(spec.argv), spec.env)
    group.procs.remove(new)
    group.procs[group.procs.index(old)] = new
    return new


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    # Every child runs in its own session (ProcessGroup starts it with start_new_session), so its process
    # group is exactly that child and what it forked. Signalling the group matters for granian: SIGKILL to
    # the main process alone leaves its worker processes running, still serving on the port (measured), so
    # a "killed" edge would go on acknowledging beacons and a "killed" collector would go on inserting.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, sig)


def kill9(proc: Proc) -> None:
    """SIGKILL to the process and its workers: no handler runs, nothing in their memory survives."""
    if proc.alive():
        _signal_group(proc, signal.SIGKILL)
        proc.popen.wait(timeout=5)


def pause(proc: Proc) -> None:
    """SIGSTOP: the process holds its sockets open but answers nothing (a hung server, not a dead one)."""
    if proc.alive():
        _signal_group(proc, signal.SIGSTOP)


def resume(proc: Proc) -> None:
    if proc.alive():
        _signal_group(proc, signal.SIGCONT)


# --- NATS topologies ------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The hub and every region's leaf node put all clients, unauthenticated, into one explicit account ADS (the
# global account does not extend over a leaf link) and each runs JetStream in a domain of its own: "hub" for
# the hub, the region's name for its leaf. A client of the leaf then reaches its region's JetStream with the
# plain API prefix and the hub's with ``nc.jetstream(domain="hub")``; the servers keep the two domains' APIs
# apart across the link. The hub's ADS_EVENTS sources each region's stream through ``$JS.<region>.API``.
HUB_DOMAIN = "hub"
_ACCOUNTS = (
    "accounts {\n  ADS: { jetstream: enabled, users: [ { user: ads, password: ads } ] }\n"
    "  SYS: { users: [ { user: sys, password: sys } ] }\n}\n"
    "system_account: SYS\nno_auth_user: ads\n"
)


def _jetstream(store_dir: Path, domain: str) -> str:
    # sync_interval: always, as in ``start_nats``: a PubAck then means the event is on disk.
    store_dir.mkdir(parents=True, exist_ok=True)
    return f"jetstream {{\n  store_dir: {_quote(str(store_dir))}\n  sync_interval: always\n  domain: {domain}\n}}\n"


def start_nats_hub(group: ProcessGroup, store_dir: Path, *, port: int, leaf_port: int) -> tuple[Proc, str]:
    """The hub: a JetStream nats-server (domain ``hub``) that also accepts leaf-node links."""
    config = group.workdir / "nats-hub.conf"
    config.write_text(
        f"listen: {_quote(f'127.0.0.1:{port}')}\n"
        f"server_name: hub\n"
        f"{_jetstream(store_dir, HUB_DOMAIN)}"
        # no_advertise: otherwise the hub tells the leaf its real leaf-node address, and the leaf reconnects
        # there directly when the proxied link drops, so a "cut" would heal itself in a second (measured).
        f"leafnodes {{\n  listen: {_quote(f'127.0.0.1:{leaf_port}')}\n  no_advertise: true\n}}\n"
        f"{_ACCOUNTS}"
    )
    proc = group.start("nats-hub", [nats_server_binary(), "-c", str(config)])
    wait_tcp("127.0.0.1", port, proc, timeout=15)
    wait_tcp("127.0.0.1", leaf_port, proc, timeout=15)
    return proc, f"nats://127.0.0.1:{port}"


def start_nats_leaf(group: ProcessGroup, region: str, store_dir: Path, *, hub_leaf_addr: str,
                    port: int | None = None) -> tuple[Proc, str]:
    """A region's leaf nats-server with its own JetStream (domain = the region's name), linked to the hub:
    while the link is down the region's events stream keeps taking and acknowledging its edges' events."""
    port = port or free_port()
    hub_leaf_url = f"nats-leaf://ads:ads@{hub_leaf_addr}"
    config = group.workdir / f"nats-leaf-{region}.conf"
    config.write_text(
        f"listen: {_quote(f'127.0.0.1:{port}')}\n"
        f"server_name: {_quote(f'leaf-{region}')}\n"
        f"{_jetstream(store_dir, region)}"
        f"leafnodes {{\n  reconnect: \"1s\"\n  remotes: [ {{ url: {_quote(hub_leaf_url)}, account: ADS }} ]\n}}\n"
        f"{_ACCOUNTS}"
    )
    proc = group.start(f"nats-leaf-{region}", [nats_server_binary(), "-c", str(config)])
    wait_tcp("127.0.0.1", port, proc, timeout=15)
    return proc, f"nats://127.0.0.1:{port}"


# --- a link that can be cut -----------------------------------------------------------------------------


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut()`` drops every connection and refuses new ones
    (both ends see the link fail, as when a region's uplink goes down), ``heal()`` lets them through again.
    """

    target_host: str
    target_port: int
    port: int = 0
    _open: bool = True
    _stopped: bool = False
    _listener: socket.socket | None = None
    _conns: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    cuts: int = 0
    refused: int = 0

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)  # so the accept loop notices stop() promptly
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()
        return self

    @property
    def url_host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._open = False
            self.cuts += 1
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def heal(self) -> None:
        with self._lock:
            self._open = True

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        if self._listener is not None:
            _close(self._listener)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=2)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self._open:  # cut while we were connecting
                    _close(client)
                    _close(upstream)
                    continue
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
