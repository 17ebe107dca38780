"""Read locust's CSV output and print one results table: per endpoint, requests, failures, p50 and p99.

Locust's ``--csv PREFIX`` writes ``PREFIX_stats.csv`` (one row per request name plus an ``Aggregated`` row),
``PREFIX_stats_history.csv`` (a row per second with the user count) and ``PREFIX_failures.csv``. This turns
them into the numbers a run is judged by, so a run can be quoted and checked by a test:

    python -m loadtest.results out/publisher out/advertiser

One catch, measured here: locust rewrites the stats CSV once a second and does not write it again at exit, so
it can miss the last second of requests (locust issues #1806, #2299). Counts checked against what the system
stored must be exact, so when the run also had ``--json-file PREFIX`` (locust then writes ``PREFIX.json``
with the final per-endpoint stats at exit) the table is built from that file, with percentiles computed from
its response-time histograms the way locust computes them; the CSV is the fallback, and still the source of
the per-second history and the failure messages.

Deliberately does not import locust: importing it monkey-patches the standard library with gevent, which
must not happen in a test process or any other caller that only wants to read the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class EndpointStats:
    method: str  # empty on the Aggregated row
    name: str
    requests: int
    failures: int
    p50_ms: float | None  # None when the endpoint saw no request
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None
    rps: float

    @property
    def label(self) -> str:
        return f"{self.method} {self.name}".strip()


@dataclass(frozen=True)
class HistoryPoint:
    timestamp: int
    users: int
    rps: float
    requests: int
    failures: int


@dataclass(frozen=True)
class Failure:
    method: str
    name: str
    error: str
    occurrences: int


def _number(raw: str | None) -> float | None:
    if raw is None or raw.strip() in ("", "N/A"):
        return None
    return float(raw)


def _path(prefix: str | Path, suffix: str) -> Path:
    return Path(f"{prefix}_{suffix}.csv")


def _percentile(histogram: dict[int, int], count: int, q: float) -> float | None:
    """Locust's own percentile over its (rounded) response-time histogram: stats.calculate_response_time_percentile."""
    if count <= 0:
        return None
    within = int(count * q)
    processed = 0
    for response_time in sorted(histogram, reverse=True):
        processed += histogram[response_time]
        if count - processed <= within:
            return float(response_time)
    return 0.0


def read_final_stats(prefix: str | Path) -> list[EndpointStats] | None:
    """The final stats from ``PREFIX.json`` (locust --json-file PREFIX), Aggregated row last; None without it."""
    path = Path(f"{prefix}.json")
    if not path.exists():
        return None
    entries = sorted(json.loads(path.read_text()), key=lambda e: (e["name"], e["method"]))
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    span = (max(ends) - min(starts)) if starts and ends else 0.0

    def row(method: str, name: str, group: list[dict]) -> EndpointStats:
        histogram: dict[int, int] = {}
        for e in group:
            for k, v in e["response_times"].items():
                histogram[int(k)] = histogram.get(int(k), 0) + int(v)
        requests = sum(e["num_requests"] for e in group)
        timed = requests - sum(e.get("num_none_requests", 0) for e in group)
        total_ms = sum(float(e["total_response_time"]) for e in group)
        return EndpointStats(
            method=method, name=name, requests=requests, failures=sum(e["num_failures"] for e in group),
            p50_ms=_percentile(histogram, requests, 0.5), p99_ms=_percentile(histogram, requests, 0.99),
            avg_ms=total_ms / timed if timed else None,
            max_ms=max((float(e["max_response_time"]) for e in group if e["num_requests"]), default=None),
            rps=requests / span if span > 0 else 0.0,
        )

    return [*(row(e["method"], e["name"], [e]) for e in entries), row("", AGGREGATED, entries)]


def read_stats(prefix: str | Path) -> list[EndpointStats]:
    """Per-endpoint stats, the Aggregated row last: final ones from ``PREFIX.json`` if present, else the CSV."""
    final = read_final_stats(prefix)
    return final if final is not None else read_csv_stats(prefix)


def read_csv_stats(prefix: str | Path) -> list[EndpointStats]:
    """Every row of ``PREFIX_stats.csv``, the Aggregated row last."""
    rows = []
    with _path(prefix, "stats").open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append(EndpointStats(
                method=row["Type"], name=row["Name"],
                requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                p50_ms=_number(row.get("50%")), p99_ms=_number(row.get("99%")),
                avg_ms=_number(row.get("Average Response Time")), max_ms=_number(row.get("Max Response Time")),
                rps=_number(row.get("Requests/s")) or 0.0,
            ))
    rows.sort(key=lambda r: r.name == AGGREGATED)  # stable: keeps locust's order otherwise
    return rows


def read_history(prefix: str | Path) -> list[HistoryPoint]:
    """The Aggregated rows of ``PREFIX_stats_history.csv``: users and throughput second by second."""
    path = _path(prefix, "stats_history")
    if not path.exists():
        return []
    points = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] != AGGREGATED:
                continue
            points.append(HistoryPoint(
                timestamp=int(row["Timestamp"]), users=int(row["User Count"]),
                rps=_number(row.get("Requests/s")) or 0.0,
                requests=int(row["Total Request Count"]), failures=int(row["Total Failure Count"]),
            ))
    return points


def read_failures(prefix: str | Path) -> list[Failure]:
    path = _path(prefix, "failures")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [Failure(row["Method"], row["Name"], row["Error"], int(row["Occurrences"]))
                for row in csv.DictReader(f)]


def endpoint(stats: Sequence[EndpointStats], name: str, method: str | None = None) -> EndpointStats:
    """The row for one request name (and method, when a name is used with several)."""
    found = [s for s in stats if s.name == name and (method is None or s.method == method)]
    if len(found) != 1:
        wanted = f"{method or '*'} {name}"
        raise KeyError(f"{wanted}: {len(found)} rows in {[s.label for s in stats]}")
    return found[0]


def total(stats: Sequence[EndpointStats]) -> EndpointStats:
    return endpoint(stats, AGGREGATED)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(stats: Sequence[EndpointStats], title: str = "") -> str:
    headers = ("endpoint", "requests", "failures", "p50 ms", "p99 ms", "avg ms", "max ms", "req/s")
    body = [(s.label, str(s.requests), str(s.failures), _ms(s.p50_ms), _ms(s.p99_ms), _ms(s.avg_ms),
             _ms(s.max_ms), f"{s.rps:.1f}") for s in stats]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    for row, s in zip(body, stats, strict=True):
        if s.name == AGGREGATED:
            out.append(line(["-" * w for w in widths]))
        out.append(line(row))
    return "\n".join(out)


def format_history(points: Sequence[HistoryPoint]) -> str:
    """One line: how long the run took and the user counts it went through (what a load shape did)."""
    if not points:
        return "no history"
    users = [p.users for p in points]
    steps = [u for i, u in enumerate(users) if i == 0 or u != users[i - 1]]
    span = points[-1].timestamp - points[0].timestamp
    return f"{span}s, peak {max(users)} users, user counts over time: {' -> '.join(map(str, steps))}"


def report(prefix: str | Path) -> str:
    """Table, user history and failures of one run, as printed by the command line."""
    parts = [format_table(read_stats(prefix), title=f"locust run {prefix}"), format_history(read_history(prefix))]
    failures = read_failures(prefix)
    if failures:
        parts.append("failures:")
        parts += [f"  {f.occurrences:>6}  {f.method} {f.name}: {f.error}" for f in failures]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", nargs="+", help="the --csv prefix given to locust (PREFIX_stats.csv is read)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any request failed")
    args = parser.parse_args(argv)
    failed = False
    for i, prefix in enumerate(args.prefix):
        if not _path(prefix, "stats").exists() and not Path(f"{prefix}.json").exists():
            print(f"neither {_path(prefix, 'stats')} nor {prefix}.json found: pass the prefix given to locust's "
                  "--csv (and --json-file)", file=sys.stderr)
            return 2
        if i:
            print()
        print(report(prefix))
        failed = failed or total(read_stats(prefix)).failures > 0
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
