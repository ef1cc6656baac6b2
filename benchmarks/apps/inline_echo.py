"""A diagnostic for `benchmarks/overhead.py`: the echo app's web layer with the echo answered in the server process.

    python benchmarks/apps/inline_echo.py PORT

The same app as `modalkit serve benchmarks/apps/echo_app.py` (middleware, routes, the connection edge), but its
runtime answers each item at once, with no batcher and no container process. Against the full echo it shows what
the trip to the container costs; against `bare_echo.py`, what the web layer costs. Not a way to serve anything.
"""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

from modalkit.app_loader import import_app
from modalkit.http_edge import edge_protocol
from modalkit.observation import Observation
from modalkit.web import create_web_endpoints, served_by

HERE = Path(__file__).resolve().parent


class InlineEcho:
    """A runtime whose every item is its own answer, resolved before `submit` returns."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, model_name: str, item: Any) -> asyncio.Future[Any]:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.set_result(item.model_dump())
        return answer

    def ready(self) -> bool:
        return True

    def not_ready(self) -> list[str]:
        return []

    def health(self) -> dict[str, Any]:
        return {"runtime": "inline"}

    def observe(self) -> Observation:
        return Observation()


if __name__ == "__main__":
    os.environ.setdefault("MODALKIT_CONFIG", str(HERE / "echo.yaml"))
    echo = import_app(HERE / "echo_app.py")
    app = create_web_endpoints(echo.EchoService, echo.Text, echo.Text, runtime=InlineEcho())  # type: ignore[arg-type]
    served = served_by(app)
    assert served is not None
    edge = edge_protocol(served.settings.limits)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, http=edge)
