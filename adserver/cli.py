"""``adserver``: one console script for every process of the system and for the local demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def _serve(target: str, host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        target=target,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        log_access=False,
        backlog=2048,
    ).serve()


def _check_settings(load: object) -> None:
    from replication.settings import SettingsError

    try:
        load()  # type: ignore[operator]
    except SettingsError as exc:
        sys.exit(str(exc))


def cmd_edge(args: argparse.Namespace) -> None:
    from edge.settings import EdgeSettings

    _check_settings(EdgeSettings.from_env)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker is a process: they share their metric values through files in this directory.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="adserver-metrics-")
    os.environ.setdefault("ADSERVER_EDGE_WORKERS", str(args.workers))
    _serve("edge.app:create_app", args.host, args.port, args.workers)


def cmd_baseline(args: argparse.Namespace) -> None:
    _serve("adserver.baseline_app:create_app", args.host, args.port, args.workers)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated campaign counts, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("campaign counts must be positive")
    return sizes


def cmd_bench(args: argparse.Namespace) -> None:
    from adserver.bench import run_bench

    sys.exit(run_bench(report=args.report, duration_s=args.duration, connections=args.connections,
                       rounds=args.rounds, only=args.only, auction_sizes=args.auction_sizes))


def cmd_control_plane(args: argparse.Namespace) -> None:
    from control_plane.settings import ControlPlaneSettings
    from control_plane.state import check_topology

    _check_settings(ControlPlaneSettings.from_env)
    check_topology(ControlPlaneSettings.from_env())
    # One worker: the control plane owns the chdb directory in the embedded default.
    _serve("control_plane.state:create_app", args.host, args.port, 1)


def cmd_collector(args: argparse.Namespace) -> None:
    from control_plane.collector_main import run_collector
    from control_plane.settings import ControlPlaneSettings

    _check_settings(ControlPlaneSettings.from_env)
    asyncio.run(run_collector(ControlPlaneSettings.from_env()))


def cmd_admin(args: argparse.Namespace) -> None:
    from control_plane.admin import create_advertiser

    nats_url = os.environ.get("ADSERVER_NATS_URL", "nats://127.0.0.1:4222")
    advertiser_id, token = asyncio.run(create_advertiser(nats_url, args.name))
    print(f"advertiser_id={advertiser_id}")
    print(f"token={token}")
    print("store the token now: only its hash is kept", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> None:
    from adserver.demo import run_demo

    sys.exit(run_demo(duration_s=args.duration, concurrency=args.concurrency, report=args.report,
                      data_dir=args.data_dir, seed=args.seed, serve=args.serve))


def main(argv: list[str] | None = None) -> None:
    from replication.observability import setup_logging

    setup_logging(os.environ.get("ADSERVER_LOG_LEVEL", "INFO"))
    parser = argparse.ArgumentParser(prog="adserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edge", help="serve one edge PoP (settings: ADSERVER_EDGE_*)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("baseline", help="serve do-nothing Starlette endpoints on the edge's granian setup "
                                        "(the yardstick of the benchmarks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("bench", help="benchmarks as ratios against a plain endpoint, measured side by side")
    p.add_argument("--report", help="write the results as JSON to this file")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per timed load run")
    p.add_argument("--connections", type=int, default=256,
                   help="concurrent HTTP connections (wrk -c), the same for both sides; a beacon is answered "
                        "after a group commit, so its throughput is concurrency / commit latency")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each side; the median counts")
    p.add_argument("--only", help="comma-separated benchmark names (default: all)")
    p.add_argument("--auction-sizes", type=_sizes, default=None,
                   help="campaign counts for the auction benchmark, comma-separated (default 10000,100000; "
                        "1000000 takes about 5 minutes and 10 GB)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("control-plane", help="serve the control plane (settings: ADSERVER_CP_*)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_control_plane)

    p = sub.add_parser("collector", help="run the event collector alone (with a ClickHouse server)")
    p.set_defaults(func=cmd_collector)

    p = sub.add_parser("admin", help="admin commands")
    admin = p.add_subparsers(dest="admin_command", required=True)
    a = admin.add_parser("create-advertiser", help="create an advertiser and print its bearer token once")
    a.add_argument("name")
    a.set_defaults(func=cmd_admin)

    sub.add_parser("simulate", help="budget controllers through compressed days with faults: adserver simulate "
                   "--report FILE [--only ...]", add_help=False)
    sub.add_parser("chaos", help="Jepsen-style fault runs: adserver chaos --report FILE [--quick] ...",
                   add_help=False)

    p = sub.add_parser("demo", help="run the whole system locally, drive traffic, print a summary")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of publisher traffic")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent simulated page views")
    p.add_argument("--report", help="also write the summary as JSON to this file")
    p.add_argument("--data-dir", help="keep NATS and chdb data here instead of a temporary directory")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--serve", action="store_true",
                   help="after the summary keep everything running (publisher page, dashboard) until Ctrl-C")
    p.set_defaults(func=cmd_demo)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # its own parser too
        from adserver.simulate import main as simulate_main

        sys.exit(simulate_main(argv[1:]))
    if argv[:1] == ["chaos"]:  # its own parser: adserver chaos --help lists the scenarios and options
        from adserver.chaos import main as chaos_main

        chaos_main(argv[1:])
        return
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
