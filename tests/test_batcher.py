"""The dynamic batcher on its own: full batches flush at once, partial ones after wait_ms."""

from __future__ import annotations

import asyncio

from modalkit.outcome import Failure
from modalkit.runtime.local.batcher import Batcher, resolve


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def seen_at_once(batcher: Batcher, clients: int) -> None:
    """As if `clients` items had been in at once a moment ago and been answered: the batcher expects them back."""
    for i in range(clients):
        batcher.submit(f"earlier {i}")
    while len(batcher):
        for pending in await batcher.next_batch():
            resolve(pending, None)
    await asyncio.sleep(0)  # their futures' callbacks run


def test_full_batch_flushes_without_waiting() -> None:
    async def scenario() -> list[int]:
        batcher = Batcher(max_batch_size=3, wait_ms=60_000)
        for i in range(7):
            batcher.submit(i)
        first = await asyncio.wait_for(batcher.next_batch(), 1)
        second = await asyncio.wait_for(batcher.next_batch(), 1)
        return [len(first), len(second), len(batcher), *(p.item for p in first + second)]

    assert run(scenario()) == [3, 3, 1, 0, 1, 2, 3, 4, 5]


def test_partial_batch_flushes_after_wait_ms() -> None:
    async def scenario() -> tuple[list[int], float]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(max_batch_size=10, wait_ms=50)
        await seen_at_once(batcher, 5)  # so two are not everyone
        batcher.submit("a")
        batcher.submit("b")
        start = loop.time()
        batch = await batcher.next_batch()
        return [p.item for p in batch], loop.time() - start

    items, waited = run(scenario())
    assert items == ["a", "b"]
    assert waited >= 0.045


def test_items_arriving_during_the_wait_join_the_batch() -> None:
    async def scenario() -> list[str]:
        batcher = Batcher(max_batch_size=3, wait_ms=5_000)
        await seen_at_once(batcher, 4)
        batcher.submit("first")
        taker = asyncio.create_task(batcher.next_batch())
        await asyncio.sleep(0)
        batcher.submit("second")
        batcher.submit("third")
        return [p.item for p in await asyncio.wait_for(taker, 1)]

    assert run(scenario()) == ["first", "second", "third"]


def test_cancelled_requests_take_no_slot_and_results_reach_their_future() -> None:
    async def scenario() -> tuple[list[str], str]:
        batcher = Batcher(max_batch_size=2, wait_ms=0)
        gone = batcher.submit("gone")
        gone.cancel()
        kept = batcher.submit("kept")
        other = batcher.submit("other")
        batch = await batcher.next_batch()
        for pending in batch:
            resolve(pending, pending.item.upper())
        return [p.item for p in batch], await kept + await other

    assert run(scenario()) == (["kept", "other"], "KEPTOTHER")


def test_fail_all_answers_every_queued_item() -> None:
    async def scenario() -> list[object]:
        batcher = Batcher(max_batch_size=4, wait_ms=10)
        futures = [batcher.submit(i) for i in range(3)]
        batcher.fail_all(Failure("unavailable", "down"))
        return [await f for f in futures]

    assert run(scenario()) == [Failure("unavailable", "down")] * 3


def test_requests_go_before_async_jobs_which_fill_the_rest() -> None:
    async def scenario() -> list[list[str]]:
        batcher = Batcher(max_batch_size=3, wait_ms=0)
        for i in range(4):
            batcher.submit(f"job{i}", background=True)
        batcher.submit("request")
        return [[p.item for p in await batcher.next_batch()] for _ in range(2)]

    assert run(scenario()) == [["request", "job0", "job1"], ["job2", "job3"]]


def test_a_solo_job_runs_alone() -> None:
    async def scenario() -> list[list[str]]:
        batcher = Batcher(max_batch_size=4, wait_ms=0)
        batcher.submit("a", background=True)
        batcher.submit("suspect", solo=True, background=True)
        batcher.submit("b", background=True)
        return [[p.item for p in await batcher.next_batch()] for _ in range(3)]

    assert run(scenario()) == [["a"], ["suspect"], ["b"]]


def test_a_full_batch_is_taken_ahead_only_when_no_free_container_waits() -> None:
    async def scenario() -> None:
        batcher = Batcher(max_batch_size=2, wait_ms=50)
        await seen_at_once(batcher, 4)
        free = asyncio.ensure_future(batcher.next_batch())
        ahead = asyncio.ensure_future(batcher.next_full_batch())
        await asyncio.sleep(0)
        batcher.submit("a")
        await asyncio.sleep(0.01)
        assert not ahead.done()  # one item is not a full batch
        batcher.submit("b")
        assert [p.item for p in await free] == ["a", "b"]  # the free container goes first
        await asyncio.sleep(0.01)
        assert not ahead.done()
        batcher.submit("c")
        batcher.submit("d")
        assert [p.item for p in await ahead] == ["c", "d"]  # no free container waits: taken ahead

    asyncio.run(scenario())


def test_a_requeued_batch_goes_back_to_the_head_in_order() -> None:
    async def scenario() -> None:
        batcher = Batcher(max_batch_size=2, wait_ms=0)
        for item in ("a", "b", "c"):
            batcher.submit(item)
        batcher.submit("job", background=True)
        taken = await batcher.next_batch()
        batcher.requeue(taken)
        assert [p.item for p in await batcher.next_batch()] == ["a", "b"]
        assert [p.item for p in await batcher.next_batch()] == ["c", "job"]

    asyncio.run(scenario())


def test_one_closed_loop_client_does_not_wait_for_a_batch_mate_that_cannot_come() -> None:
    async def scenario() -> list[list[str]]:
        batcher = Batcher(max_batch_size=32, wait_ms=60_000)
        batches = []
        for turn in range(3):  # each request sent once the one before was answered
            future = batcher.submit(f"request {turn}")
            batch = await asyncio.wait_for(batcher.next_batch(), 1)  # never the 60 s of wait_ms
            batches.append([p.item for p in batch])
            for pending in batch:
                resolve(pending, None)
            await future
            await asyncio.sleep(0)  # the answer travels back before the client sends again
        return batches

    assert run(scenario()) == [["request 0"], ["request 1"], ["request 2"]]


def test_eight_clients_batch_closes_when_the_eighth_arrives_not_at_wait_ms() -> None:
    async def scenario() -> tuple[list[int], float]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(max_batch_size=32, wait_ms=60_000)
        await seen_at_once(batcher, 8)
        taker = asyncio.ensure_future(batcher.next_batch())
        start = loop.time()
        for i in range(8):
            batcher.submit(i)
            await asyncio.sleep(0.002)
            assert i == 7 or not taker.done()  # seven are not everyone: it waits
        batch = await asyncio.wait_for(taker, 1)
        return [p.item for p in batch], loop.time() - start

    items, took = run(scenario())
    assert items == list(range(8))
    assert took < 5  # closed by the rule, long before wait_ms


def test_fewer_than_lately_seen_wait_the_full_wait_ms_which_stays_the_bound() -> None:
    async def scenario() -> tuple[list[str], float, list[str]]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(max_batch_size=32, wait_ms=80)
        await seen_at_once(batcher, 6)
        batcher.submit("a")
        batcher.submit("b")
        start = loop.time()
        first = [p.item for p in await batcher.next_batch()]
        waited = loop.time() - start
        late = batcher.submit("late")  # arrives after; nothing else comes
        second = [p.item for p in await asyncio.wait_for(batcher.next_batch(), 1)]
        late.cancel()
        return first, waited, second

    first, waited, second = run(scenario())
    assert first == ["a", "b"] and second == ["late"]
    assert waited >= 0.075  # two of six: it waited, and closed at wait_ms (an upper bound, never exceeded much)


def test_the_peak_is_forgotten_after_two_windows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import modalkit.runtime.local.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "PEAK_WINDOW_S", 0.05)

    async def scenario() -> tuple[bool, bool]:
        batcher = Batcher(max_batch_size=32, wait_ms=60_000)
        await seen_at_once(batcher, 8)
        batcher.submit("one")
        remembered = not batcher.everyone_is_here()  # 1 of 8: more are expected
        await asyncio.sleep(0.12)  # two windows with no more than one in
        batcher.submit("two")
        batcher.submit("three")
        return remembered, batcher.everyone_is_here()

    remembered, forgotten = run(scenario())
    assert remembered and forgotten
