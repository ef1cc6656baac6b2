"""Property tests of the batcher: one answer per item, order kept, batches within max_batch_size, and a
partial batch never held much past wait_ms."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from modalkit.runtime.local.batcher import Batcher, resolve

SLACK_S = 0.03  # event-loop scheduling on a busy 2-core machine


@settings(max_examples=40, deadline=None)
@given(
    max_batch_size=st.integers(1, 12),
    wait_ms=st.integers(0, 15),
    gaps_ms=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    work_ms=st.integers(0, 5),
)
def test_every_item_answered_once_in_order_within_limits(
    max_batch_size: int, wait_ms: int, gaps_ms: list[int], work_ms: int
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batcher = Batcher(max_batch_size, wait_ms)
        taken: list[list[int]] = []
        answers: dict[int, int] = {}

        async def container() -> None:
            while True:
                batch = await batcher.next_batch()
                closed = loop.time()
                assert 1 <= len(batch) <= max_batch_size
                if len(batch) < max_batch_size:  # a partial batch waited at most wait_ms (+ slack)
                    assert closed - batch[0].arrival <= wait_ms / 1000 + SLACK_S + work_ms / 1000
                taken.append([p.item for p in batch])
                await asyncio.sleep(work_ms / 1000)
                for pending in batch:
                    resolve(pending, pending.item * 10)

        consumer = asyncio.create_task(container())
        futures = []
        for index, gap in enumerate(gaps_ms):
            futures.append(batcher.submit(index))
            await asyncio.sleep(gap / 1000)
        for index, future in enumerate(futures):
            answers[index] = await asyncio.wait_for(future, 5)
        consumer.cancel()

        assert answers == {i: i * 10 for i in range(len(gaps_ms))}
        assert [item for batch in taken for item in batch] == list(range(len(gaps_ms)))

    asyncio.run(scenario())
