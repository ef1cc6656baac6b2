"""`modalkit run`: bulk inference over a JSONL file, in input order, resumable after a kill.

Output line i answers input line i. Lines are appended and flushed as they complete in order, so after
a crash the output holds a complete prefix (a torn last line is cut off) and a rerun starts after it.

A file field's value may name a file, `{"file": "images/cat.png"}` (relative to the JSONL file's folder): it is
read and becomes the field's value (a `File` with its filename and guessed content type, or the bytes) before
validation. A file that cannot be read, or that its field's `Upload` rules refuse, fails its own line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from modalkit.exceptions import BulkStopped
from modalkit.files import FileField, file_fields
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


def parse_line(input_model: type[BaseModel], line: str, folder: Path | None = None) -> Any:
    """The input of one line, or the Failure that answers it. File fields naming a file (`{"file": path}`) are
    read from `folder` (the JSONL file's) first."""
    try:
        source = _with_files(input_model, line, folder or Path.cwd())
        if isinstance(source, Failure):
            return source
        if isinstance(source, str):
            return input_model.model_validate_json(source)
        return input_model.model_validate(source)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        return Failure("rejected", "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in problems))


def _with_files(input_model: type[BaseModel], line: str, folder: Path) -> str | dict[str, Any] | Failure:
    """What to validate: the line itself when it names no file (or is no JSON object: validation says why);
    with the files it names read in, as JSON again when they are all `File` fields (so the rest of the line is
    read as JSON, as a JSON request is), else as Python values (as a multipart request is); or a Failure when a
    file cannot be used."""
    fields = file_fields(input_model)
    if not fields or '"file"' not in line:
        return line
    try:
        values = json.loads(line)
    except ValueError:
        return line
    if not isinstance(values, dict):
        return line
    named = {name: values[name]["file"] for name in fields if _names_a_file(values.get(name))}
    if not named:
        return line
    for name, relative in named.items():
        value = _read_file(fields[name], folder, relative)
        if isinstance(value, Failure):
            return value
        values[name] = value
    if all(fields[name].as_file for name in named):
        return json.dumps({k: v.model_dump(mode="json") if k in named else v for k, v in values.items()})
    return values


def _names_a_file(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str)


def _read_file(field: FileField, folder: Path, relative: str) -> Any:
    """The field's value from the file `relative` names (an absolute path is taken as is), or a Failure."""
    path = folder / relative
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Failure("rejected", f"{field.name}: cannot read {relative}: {exc.strerror or exc}")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if field.content_types and not field.accepts(content_type, ()):
        accepted = ", ".join(field.content_types)
        return Failure("rejected", f"{field.name}: {relative} is {content_type}; accepted: {accepted}")
    if field.max_bytes is not None and len(data) > field.max_bytes:
        return Failure("rejected", f"{field.name}: {relative} is {len(data)} bytes; at most {field.max_bytes}")
    return field.value(data, path.name, content_type)


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
                in_flight.append(_answer_of(submit, parse_line(input_model, line, source.parent)))
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
