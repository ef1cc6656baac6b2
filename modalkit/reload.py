"""`modalkit serve --reload`: a supervisor that restarts the server, containers and all, when a watched file changes.

The server runs as a child process (`python -m modalkit serve ...` without --reload), so each restart imports the
edited app into a fresh interpreter and starts fresh containers; nothing of the old code survives a restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import click

WATCHED_SUFFIXES = (".py", ".yaml", ".yml")


class WatchedFiles:
    """The app's folder's .py and YAML files, and the config files wherever they are (a watchfiles filter)."""

    def __init__(self, app_path: Path, config_files: Iterable[Path]) -> None:
        self.app_folder = app_path.resolve().parent
        self.files = {app_path.resolve(), *(f.resolve() for f in config_files)}

    @property
    def folders(self) -> set[Path]:
        # folders, not files: an editor that saves by renaming a new file over the old one is still seen
        return {self.app_folder, *(f.parent for f in self.files if f.parent.is_dir())}

    def __call__(self, change: Any, path: str) -> bool:
        file = Path(path)
        return file in self.files or (file.parent == self.app_folder and file.suffix in WATCHED_SUFFIXES)


class ServerProcess:
    """The `modalkit serve` child: started, stopped gracefully (SIGTERM, then SIGKILL after `grace_seconds`)."""

    def __init__(self, command: list[str], grace_seconds: float) -> None:
        self.command = command
        self.grace_seconds = grace_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.reported_exit = False

    def start(self) -> None:
        # its own session: Ctrl+C reaches the supervisor only, which then stops the server the one graceful way
        self.process = subprocess.Popen(self.command, start_new_session=True)
        self.reported_exit = False

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # uvicorn's graceful shutdown: in-flight requests end, then the containers stop
        try:
            process.wait(timeout=self.grace_seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(process.pid, signal.SIGKILL)  # its containers see their pipe close and exit too
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def report_exit(self) -> None:
        """Say once that the server ended by itself (a syntax error, say): the next change starts it again."""
        code = self.process.poll() if self.process is not None else None
        if code is not None and not self.reported_exit:
            click.echo(f"modalkit: the server exited with code {code}; waiting for a change to restart it", err=True)
            self.reported_exit = True


def serve_with_reload(command: list[str], watched: WatchedFiles, grace_seconds: float) -> None:
    """Run `command` (a `modalkit serve` without --reload) until Ctrl+C or SIGTERM; restart it on each change."""
    import watchfiles

    server = ServerProcess(command, grace_seconds)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, as Ctrl+C does
    shown = ", ".join(str(f) for f in sorted(watched.folders))
    click.echo(f"modalkit: watching .py and YAML files in {shown}", err=True)
    server.start()
    try:
        for changes in watchfiles.watch(
            *watched.folders, watch_filter=watched, recursive=False, yield_on_timeout=True, rust_timeout=1000
        ):
            if not changes:  # a timeout: a moment to notice a server that ended by itself
                server.report_exit()
                continue
            names = ", ".join(sorted({Path(path).name for _, path in changes}))
            click.echo(f"modalkit: {names} changed; restarting the server", err=True)
            server.restart()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
