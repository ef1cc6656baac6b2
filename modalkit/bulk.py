"""`modalkit run`: bulk inference over a JSONL file, in input order, resumable after a kill.

Output line i answers input line i. Lines are appended and flushed as they complete in order, so after
a crash the output holds a complete prefix (a torn last line is cut off) and a rerun starts after it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from modalkit.exceptions import BulkStopped
from modalkit.outcome import Failure, encode, failure_body

Submit = Callable[[Any], Awaitable[Any]]
ATTEMPTS = 3


async def _answer_with_retries(submit: Submit, item: Any) -> Any:
    for attempt in range(1, ATTEMPTS + 1):
        result = await submit(item)
        if not (isinstance(result, Failure) and result.transient):
            return result
        if attempt < ATTEMPTS:
            await asyncio.sleep(0.5 * attempt)
    raise BulkStopped(f"{result.detail} ({ATTEMPTS} attempts)")


def completed_lines(output: Path) -> int:
    """Complete lines already in `output`; a torn last line (the process was killed mid-write) is removed."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with output.open("r+b") as f:
            f.truncate(keep)
    return data[:keep].count(b"\n")


def answer_line(result: Any) -> bytes:
    if isinstance(result, Failure):
        return json.dumps({"error": failure_body(result)}).encode()
    return encode(result)


def parse_line(input_model: type[BaseModel], line: str) -> Any:
    try:
        return input_model.model_validate_json(line)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        return Failure("rejected", "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in problems))


async def run_file(
    source: Path,
    output: Path,
    submit: Submit,
    input_model: type[BaseModel],
    window: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run every line of `source` not yet answered in `output`, `window` in flight; returns counts and rate."""
    skip = completed_lines(output)
    done = errors = 0
    started = time.perf_counter()
    in_flight: deque[asyncio.Future[Any]] = deque()
    with source.open() as lines, output.open("ab") as sink:

        def write(result: Any) -> None:
            nonlocal done, errors
            sink.write(answer_line(result) + b"\n")
            done += 1
            errors += isinstance(result, Failure)
            if progress is not None:
                progress(1)

        try:
            for line in _unanswered_lines(lines, skip):
                in_flight.append(_answer_of(submit, parse_line(input_model, line)))
                if len(in_flight) >= window:
                    write(await in_flight.popleft())
                    sink.flush()
            while in_flight:
                write(await in_flight.popleft())
        finally:
            for pending in in_flight:  # stopped early: what is still running is not written
                pending.cancel()
            sink.flush()
            os.fsync(sink.fileno())
    elapsed = time.perf_counter() - started
    return {"skipped": skip, "done": done, "errors": errors, "items_per_s": done / elapsed if elapsed else 0.0}


def _unanswered_lines(lines: IO[str], skip: int) -> Iterator[str]:
    """Non-blank lines after the first `skip` of them (blank lines get no answer line)."""
    return itertools.islice((line for line in lines if line.strip()), skip, None)


def _answer_of(submit: Submit, item: Any) -> asyncio.Future[Any]:
    """The answer to one line: a line that did not parse is answered at once, others run with retries."""
    if isinstance(item, Failure):
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answered.set_result(item)
        return answered
    return asyncio.ensure_future(_answer_with_retries(submit, item))
