"""``python -m adserver.jetstream_bench``: what a JetStream stream with fsync on every write stores per second,
one plain publish at a time against atomic batches: the measurement behind the edge's group commit
(``replication/publisher.py``).

It starts its own nats-server exactly as the stack does (``sync_interval: always``, file storage) and a stream
with ``allow_atomic``, then stores ``--messages`` 300-byte messages, each with its own ``Nats-Msg-Id``, in each
mode: plain publishes with 256 awaiting their PubAck at once, and atomic batches of 1, 32 and 128 messages
with 2 batches in flight. Prints msgs/s per mode (about 15 seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import api

from adserver.processes import ProcessGroup, start_nats

PAYLOAD = b"x" * 300


async def _timed(nc: NATS, subject: str, requests: list[list[tuple[str, dict[str, str]]]], in_flight: int) -> float:
    """Send each request (a list of (msg id, headers) sent back to back, the last with a reply), at most
    ``in_flight`` awaiting their answer; msgs/s over the whole run. Raises on an error answer."""
    inbox = nc.new_inbox()
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        future = waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    gate = asyncio.Semaphore(in_flight)

    async def send(token: int, messages: list[tuple[str, dict[str, str]]]) -> None:
        async with gate:
            answer = waiting[str(token)] = loop.create_future()
            for i, (_, headers) in enumerate(messages):
                last = i == len(messages) - 1
                await nc.publish(subject, PAYLOAD, reply=f"{inbox}.{token}" if last else "", headers=headers)
            data = await asyncio.wait_for(answer, 30)
            if b'"error"' in data or not data:
                raise RuntimeError(f"JetStream refused a request: {data[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(send(t, m) for t, m in enumerate(requests)))
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return sum(len(m) for m in requests) / elapsed


def _plain(prefix: str, n: int) -> list[list[tuple[str, dict[str, str]]]]:
    return [[(f"{prefix}{i}", {"Nats-Msg-Id": f"{prefix}{i}"})] for i in range(n)]


def _batches(prefix: str, n: int, size: int) -> list[list[tuple[str, dict[str, str]]]]:
    requests = []
    for b in range(n // size):
        batch = []
        for seq in range(1, size + 1):
            headers = {"Nats-Msg-Id": f"{prefix}{b}-{seq}", "Nats-Batch-Id": f"{prefix}{b}",
                       "Nats-Batch-Sequence": str(seq)}
            if seq == size:
                headers["Nats-Batch-Commit"] = "1"
            batch.append((headers["Nats-Msg-Id"], headers))
        requests.append(batch)
    return requests


async def _run(url: str, messages: int) -> list[tuple[str, float]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name="BENCH", subjects=["bench.>"], storage=api.StorageType.FILE,
                                             duplicate_window=600, allow_atomic=True))
        modes = [("plain publishes, 256 in flight", _plain("p", messages), 256)]
        modes += [(f"atomic batches of {size}, 2 in flight", _batches(f"b{size}-", messages, size), 2)
                  for size in (1, 32, 128)]
        results = []
        for name, requests, in_flight in modes:
            # Batches of one are slow: a tenth of the messages measures them as well.
            if len(requests[0]) == 1 and in_flight == 2:
                requests = requests[: max(1, len(requests) // 10)]
            rate = await _timed(nc, "bench.e", requests, in_flight)
            print(f"[jetstream-bench] {name}: {rate:,.0f} msgs/s", file=sys.stderr, flush=True)
            results.append((name, rate))
        return results
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_480, help="messages stored per mode")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jetstream-bench-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            _, url = start_nats(group, Path(tmp) / "jetstream")
            results = asyncio.run(_run(url, args.messages))
        finally:
            group.stop_all()
    print(f"\n{'mode (sync_interval: always)':<40} {'msgs/s':>10}")
    for name, rate in results:
        print(f"{name:<40} {rate:>10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
