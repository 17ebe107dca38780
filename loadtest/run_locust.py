"""Run the locust scenarios headless and bounded against given hosts, side by side, then print the table.

Locust takes one ``--host`` per process, and the two audiences live on different hosts (publishers on an
edge PoP, advertisers on the control plane), so this starts one locust process per scenario, at the same
time, each with its own ``--csv`` prefix, waits for both (each is bounded by ``--run-time`` or by the load
shape), and prints each run's results:

    python -m loadtest.run_locust --edge http://127.0.0.1:8080 --cp http://127.0.0.1:8000 \
        --tokens "$TOKEN1,$TOKEN2" --users 50 --run-time 60s --out var/locust
    python -m loadtest.run_locust --edge http://127.0.0.1:8080 --shape --users 200 --run-time 10m

With ``--shape`` the publisher follows the SRE stage list (``locustfiles/sre_shape.py``): ``--users`` is the
peak and ``--run-time`` the whole profile. Locust runs as ``python -m locust`` with this interpreter. Like
``loadtest.results`` this module does not import locust (its gevent monkey-patching must stay in the locust
processes), nor any package of the system: it drives the system over HTTP only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.results import read_stats, report, total

LOCUSTFILES = Path(__file__).resolve().parent / "locustfiles"
_TIMESPAN = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def seconds(timespan: str) -> int:
    """Locust's timespan syntax (20, 20s, 3m, 1h30m) in seconds."""
    text = timespan.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    match = _TIMESPAN.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{timespan!r} is not a timespan such as 20, 20s, 3m or 1h30m")
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


@dataclass
class LocustRun:
    """One locust process: what to run, where its CSV and log go, and the environment it needs."""

    name: str
    argv: list[str]
    csv_prefix: Path
    log_path: Path
    bound_s: int  # how long it runs by itself; the caller's timeout adds grace to this
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Finished:
    run: LocustRun
    returncode: int
    wall_s: float
    timed_out: bool

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.run.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _argv(files: Sequence[str], host: str, csv_prefix: Path, stop_timeout_s: int,
          users: int | None, spawn_rate: float | None, run_time: str | None) -> list[str]:
    argv = [sys.executable, "-m", "locust", "-f", ",".join(str(LOCUSTFILES / f) for f in files),
            "--headless", "--host", host, "--only-summary",
            # The CSV is rewritten once a second and not at exit; --json-file writes the final stats at exit
            # (PREFIX.json), which loadtest.results prefers. The CSV still gives the per-second history.
            "--csv", str(csv_prefix), "--json-file", str(csv_prefix),
            # Let users finish the request in flight when the run ends, so every beacon the edge counted is
            # also in locust's stats (a stored-vs-sent check depends on it).
            "--stop-timeout", str(stop_timeout_s)]
    if users is not None:
        argv += ["--users", str(users), "--spawn-rate", str(spawn_rate or users)]
    if run_time is not None:
        argv += ["--run-time", run_time]
    return argv


def publisher_run(edge_url: str, out_dir: Path, *, users: int, run_time: str, spawn_rate: float | None = None,
                  shape: bool = False, env: Mapping[str, str] | None = None, stop_timeout_s: int = 10) -> LocustRun:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_prefix = out_dir / ("publisher-shape" if shape else "publisher")
    bound = seconds(run_time)
    if shape:
        # The shape bounds the run; -u/-r/-t would be ignored (locust warns), so they are not passed.
        argv = _argv(["publisher.py", "sre_shape.py"], edge_url, csv_prefix, stop_timeout_s, None, None, None)
        extra = {"ADSERVER_LOCUST_SHAPE_SECONDS": str(bound), "ADSERVER_LOCUST_SHAPE_PEAK": str(users)}
    else:
        argv = _argv(["publisher.py"], edge_url, csv_prefix, stop_timeout_s, users, spawn_rate, run_time)
        extra = {}
    return LocustRun(csv_prefix.name, argv, csv_prefix, out_dir / f"{csv_prefix.name}.log",
                     bound + stop_timeout_s, {**extra, **(env or {})})


def advertiser_run(cp_url: str, out_dir: Path, tokens: Sequence[str], *, users: int, run_time: str,
                   spawn_rate: float | None = None, env: Mapping[str, str] | None = None,
                   stop_timeout_s: int = 10) -> LocustRun:
    if not tokens:
        raise ValueError("the advertiser scenario needs at least one bearer token")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_prefix = out_dir / "advertiser"
    argv = _argv(["advertiser.py"], cp_url, csv_prefix, stop_timeout_s, users, spawn_rate, run_time)
    return LocustRun("advertiser", argv, csv_prefix, out_dir / "advertiser.log", seconds(run_time) + stop_timeout_s,
                     {"ADSERVER_LOCUST_TOKENS": ",".join(tokens), **(env or {})})


def run_all(runs: Sequence[LocustRun], grace_s: float = 30.0) -> list[Finished]:
    """Start every run at once, wait for all; a run past its bound plus grace is terminated (and so reported)."""
    started = time.monotonic()
    procs = []
    for run in runs:
        with run.log_path.open("wb") as log:
            procs.append(subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **run.env}))
    finished = []
    for run, proc in zip(runs, procs, strict=True):
        remaining = max(1.0, run.bound_s + grace_s - (time.monotonic() - started))
        timed_out = False
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()  # locust writes its CSV on SIGTERM too
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        finished.append(Finished(run, proc.returncode, time.monotonic() - started, timed_out))
    return finished


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run_locust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", help="edge PoP base URL for the publisher scenario")
    parser.add_argument("--cp", help="control-plane base URL for the advertiser scenario")
    parser.add_argument("--tokens", default=os.environ.get("ADSERVER_LOCUST_TOKENS", ""),
                        help="advertiser bearer tokens, comma-separated (default: $ADSERVER_LOCUST_TOKENS)")
    parser.add_argument("--users", type=int, default=20, help="publisher users (the peak with --shape)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all)")
    parser.add_argument("--advertisers", type=int, default=2, help="advertiser users")
    parser.add_argument("--run-time", default="60s", help="how long to run, locust timespan (default 60s)")
    parser.add_argument("--shape", action="store_true", help="publisher follows the SRE stage list")
    parser.add_argument("--out", default="var/locust", help="directory for CSV files and logs")
    args = parser.parse_args(argv)
    if not args.edge and not args.cp:
        parser.error("give --edge, --cp or both")
    seconds(args.run_time)  # fail on a bad timespan before starting anything
    out = Path(args.out)
    runs = []
    if args.edge:
        runs.append(publisher_run(args.edge, out, users=args.users, spawn_rate=args.spawn_rate,
                                  run_time=args.run_time, shape=args.shape))
    if args.cp:
        tokens = [t for t in args.tokens.split(",") if t.strip()]
        if not tokens:
            parser.error("--cp needs --tokens (or ADSERVER_LOCUST_TOKENS): create advertisers first")
        runs.append(advertiser_run(args.cp, out, tokens, users=args.advertisers, run_time=args.run_time))
    status = 0
    for done in run_all(runs):
        print()
        if not done.run.csv_prefix.with_name(done.run.csv_prefix.name + "_stats.csv").exists():
            print(f"{done.run.name}: no results (exit {done.returncode}); log {done.run.log_path}:\n"
                  f"{done.log_tail()}")
            status = 1
            continue
        print(report(done.run.csv_prefix))
        print(f"exit code {done.returncode}{' (timed out)' if done.timed_out else ''}, log {done.run.log_path}")
        if done.returncode != 0 or done.timed_out or total(read_stats(done.run.csv_prefix)).failures:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
