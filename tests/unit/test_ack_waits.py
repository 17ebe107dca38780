"""AckWaits (replication/publisher.py): a beacon waits on its event's PubAck with a deadline, no timer each."""

from __future__ import annotations

import asyncio

from replication.publisher import AckWaits


def test_a_wait_sees_the_ack_or_gives_up_at_the_deadline_without_touching_the_shared_future() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        waits = AckWaits(0.2, sweep_every_s=0.01)
        acked: asyncio.Future[None] = loop.create_future()
        slow: asyncio.Future[None] = loop.create_future()
        first, late = waits.wait(acked), waits.wait(slow)
        loop.call_later(0.05, acked.set_result, None)
        assert await first is True
        started = loop.time()
        assert await late is False  # no ack within 0.2 s: the beacon answers 503
        assert 0.1 <= loop.time() - started <= 0.4
        assert not slow.done()  # the publisher still owns it and keeps retrying
        retry = waits.wait(slow)  # the client's retry waits on the same acknowledgement
        slow.set_result(None)
        assert await retry is True
        assert await waits.wait(acked) is True  # already durable: answered at once
        await asyncio.sleep(0.05)  # answered waits leave the deque at the next sweep, which then stops
        assert not waits._pending and waits._sweep_handle is None

    asyncio.run(scenario())


def test_many_waits_share_one_sweep() -> None:
    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        waits = AckWaits(0.1, sweep_every_s=0.02)
        futures = [loop.create_future() for _ in range(1000)]
        results = [waits.wait(f) for f in futures]
        for f in futures[::2]:
            f.set_result(None)
        return list(await asyncio.gather(*results))

    got = asyncio.run(scenario())
    assert got == [i % 2 == 0 for i in range(1000)]
