"""The container template: one process per server that has imported the app, and forks each new container.

A spawned container starts Python and imports modalkit, the app, torch and transformers before its model loads; a
container forked from the template (`template_process`) has all of that already. It is the server's child all the
same: the server makes its pipes and passes their ends with the request (SCM_RIGHTS), and adopts it (a child
subreaper while it asks), so `ForkedProcess` can wait for it and kill it as `asyncio.subprocess.Process` does for a
spawned one. When the template cannot fork (not started yet, died, refused), `fork` returns None and the container
is spawned as before; a template that died is started again for the next one.

`modalkit serve` launches the template before it imports the app (`launch_early`), so both import side by side;
the local runtime adopts it. MODALKIT_CONTAINER_TEMPLATE=0 turns the template off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modalkit.app_loader import ServiceRef

logger = logging.getLogger("modalkit.pool")

SWITCH_ENV = "MODALKIT_CONTAINER_TEMPLATE"
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_PIPE_BYTES = 1 << 20
_FIRST_REPLY_S = 120.0  # the first reply waits for the template's imports (those of a spawned container, too)
_REPLY_S = 10.0  # a fork takes milliseconds: a template this slow is stuck
_RESTARTS = 3  # a template that keeps dying is given up: containers are spawned

_launched: dict[str, ContainerTemplate] = {}  # launched by `modalkit serve` before the app was imported
_adopting = 0  # fork requests in flight, in every template: while any is, this process is a child subreaper


def enabled() -> bool:
    return (
        sys.platform == "linux"
        and hasattr(os, "pidfd_open")
        and os.environ.get(SWITCH_ENV, "1").lower() not in ("0", "false", "off", "no")
    )


def launch_early(app_path: str) -> None:
    """Start the template of `app_path` now, for the runtime that will serve it to adopt (`for_app`)."""
    if enabled():
        template = ContainerTemplate(app_path)
        template.start()
        _launched[template.app_path] = template


def close_unadopted() -> None:
    """Stop the templates `launch_early` started that no local runtime took (the app runs elsewhere)."""
    while _launched:
        _launched.popitem()[1].close()


@dataclass(frozen=True)
class ForkRequest:
    """What the template needs to fork a container; its pipe ends travel beside it (SCM_RIGHTS)."""

    ref: ServiceRef
    model_name: str
    env: dict[str, str]


class ForkedProcess:
    """The server's handle on a container forked from the template, as `asyncio.subprocess.Process` is on a
    spawned one: its pipes, its exit status once it ends (a pidfd tells when), and kill."""

    def __init__(self, pid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._reap)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:  # not yet reaped: the pid is still this process's, even as a zombie
            os.kill(self.pid, signal.SIGKILL)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: ended, how is not known
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        self.stdin.close()  # what it had not read is lost with it; its output stays readable to the end
        self._exited.set_result(self.returncode)


class ContainerTemplate:
    def __init__(self, app_path: str) -> None:
        self.app_path = str(Path(app_path).resolve())
        self.unusable: str | None = None  # why containers are spawned instead, for good
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._asking: asyncio.Lock | None = None
        self._restarts = 0
        self._answered = False  # it has replied once: done importing

    @classmethod
    def for_app(cls, app_path: str) -> ContainerTemplate:
        """The template `modalkit serve` launched for `app_path`, or a new one, started by `start`."""
        template = _launched.pop(str(Path(app_path).resolve()), None)
        return template if template is not None else cls(app_path)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def start(self) -> None:
        if self._process is not None or self.unusable is not None:
            return
        if not enabled():
            self.unusable = f"{SWITCH_ENV} is off, or this system cannot fork containers"
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "modalkit.runtime.local.template_process", str(theirs.fileno())]
        try:  # its own session: Ctrl-C is the server's; it dies with the server (PDEATHSIG)
            self._process = subprocess.Popen(
                [*command, self.app_path],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            self.unusable = f"it could not start: {exc}"
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._answered = False

    def close(self) -> None:
        """Stop the template for good; the containers it forked are the server's, and live on."""
        self.unusable = self.unusable or "closed"
        self._end_process()

    def _end_process(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()
            self._process.wait()
            self._process = None

    async def fork(self, ref: ServiceRef, model_name: str, env: dict[str, str]) -> ForkedProcess | None:
        """A container forked from the template, adopted by this process; None when it must be spawned."""
        if self._asking is None:
            self._asking = asyncio.Lock()
        async with self._asking:
            if not self._running():
                return None
            try:
                return await self._ask(ForkRequest(ref, model_name, env))
            except (OSError, EOFError, TimeoutError, ValueError, pickle.PickleError) as exc:
                self._give_up_this_one(f"{type(exc).__name__}: {exc}")
                return None
            except asyncio.CancelledError:  # its reply, still to come, would answer the next request
                self._give_up_this_one("a fork request was cancelled")
                raise

    def _running(self) -> bool:
        """Whether the template can take a request now; one that died is started again for the next."""
        if self.unusable is not None or self._process is None:
            return False
        if self._process.poll() is None:
            return True
        self._give_up_this_one(f"it ended ({self._process.returncode})")
        return False

    def _give_up_this_one(self, why: str) -> None:
        if self.unusable is not None:  # closed meanwhile
            return
        if self._restarts >= _RESTARTS:
            self._give_up(why)
            return
        self._end_process()
        self._restarts += 1
        logger.warning("container template of %s: %s; started again", self.app_path, why)
        self.start()

    async def _ask(self, request: ForkRequest) -> ForkedProcess | None:
        assert self._control is not None
        control, loop = self._control, asyncio.get_running_loop()
        frames_in, to_container = os.pipe()  # the container's stdin
        from_container, frames_out = os.pipe()  # the container's stdout
        for fd in (to_container, from_container):
            with contextlib.suppress(OSError):  # one side widens the pipe; Linux only, else it stays as it was
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        try:
            with _adopting_orphans():
                socket.send_fds(control, [pickle.dumps(request)], [frames_in, frames_out])
                waiting = _REPLY_S if self._answered else _FIRST_REPLY_S
                reply = await asyncio.wait_for(loop.sock_recv(control, 1 << 16), waiting)
        except BaseException:
            os.close(to_container)
            os.close(from_container)
            raise
        finally:
            os.close(frames_in)
            os.close(frames_out)
        if not reply:
            raise EOFError("it closed its socket")
        self._answered = True
        kind, detail = pickle.loads(reply)
        if kind != "forked" or not _is_child(detail):
            os.close(to_container)
            os.close(from_container)
            if kind == "forked":  # adopted elsewhere: not a container this server can wait for
                with contextlib.suppress(OSError):
                    os.kill(detail, signal.SIGKILL)
                raise OSError("the forked container was not adopted by the server")
            self._give_up(str(detail))
            return None
        return await _connect(detail, to_container, from_container)

    def _give_up(self, why: str) -> None:
        self.unusable = why
        logger.warning("container template of %s: %s; containers start as new processes", self.app_path, why)
        self._end_process()


async def _connect(pid: int, to_container: int, from_container: int) -> ForkedProcess:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_container, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(to_container, "wb", 0)
    )
    return ForkedProcess(pid, asyncio.StreamWriter(transport, protocol, None, loop), reader)


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """This process adopts the orphans of its descendants meanwhile (the forked container among them), and only
    meanwhile: any other orphan would stay a zombie here. Several templates may ask at once."""
    global _adopting
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    _adopting += 1
    if _adopting == 1:
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        _adopting -= 1
        if _adopting == 0:
            prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _is_child(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid()
