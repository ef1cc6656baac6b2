"""The container template's process: imports the app once, then forks a container for each request.

Run by the server as `python -m modalkit.runtime.local.template_process SOCKET_FD APP_PATH` (`template.py` is the
server's side). It imports the worker, the user's app and the libraries the app's files name (torch, transformers:
imports inside functions count too), without running any model code, and never initialises CUDA. Then, for each
request on the socket (a pickled `ForkRequest` with the container's two pipe ends, SCM_RIGHTS), it forks twice: the
container is orphaned at once and adopted by the server (a child subreaper while it asks), so it is the server's
child as a spawned one is, with its own session, and outlives this process. The reply is ("forked", pid) or
("refused", why). The template ends when the server closes the socket, or dies with the server.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from modalkit.app_loader import import_app
from modalkit.runtime.local import worker
from modalkit.runtime.local.template import ForkRequest

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ADOPTION_S = 5.0  # how long a forked container waits to become the server's child before it gives up
# transformers imports a model's code on from_pretrained; its base module is the heavy part, common to all models.
_LAZY_COMPANIONS = {"transformers": ("transformers.modeling_utils",)}


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    server_pid = os.getppid()
    _die_with_the_server()
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # torch.cuda.is_available() then leaves CUDA alone
    try:
        import_app(argv[1])
    except Exception:
        return 3  # quietly: the containers, spawned instead, say what is wrong with the app
    warm_imports(Path(argv[1]))
    gc.freeze()  # the containers' collections skip what was imported here, and leave those pages shared
    order = _serve_forks(control, server_pid)
    if order is None:
        return 0
    return worker.run(order.ref, order.model_name)  # in a forked container, as a spawned one runs


def warm_imports(app_path: Path) -> None:
    """Import what the app's own files import, in functions too (a model imports torch in its load), and the
    names taken from them; whatever fails is left for the container to report."""
    for name, attributes in _imports_named(app_path):
        with contextlib.suppress(Exception):
            module = importlib.import_module(name)
            for attribute in attributes:
                getattr(module, attribute, None)  # a lazy package (transformers) imports the name's module now
            for companion in _LAZY_COMPANIONS.get(name, ()):
                importlib.import_module(companion)


def _imports_named(app_path: Path) -> list[tuple[str, list[str]]]:
    """Absolute imports in the app's file and in the modules it imported from its own folder."""
    folder = app_path.resolve().parent
    files = {app_path.resolve()}
    for module in list(sys.modules.values()):
        file = Path(getattr(module, "__file__", None) or "/").resolve()
        if file.is_relative_to(folder) and not any(part in file.parts for part in ("site-packages", ".venv")):
            files.add(file)
    found: list[tuple[str, list[str]]] = []
    for file in sorted(files):
        with contextlib.suppress(OSError, SyntaxError, ValueError):
            for node in ast.walk(ast.parse(file.read_bytes())):
                if isinstance(node, ast.Import):
                    found += [(alias.name, []) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.append((node.module, [alias.name for alias in node.names if alias.name != "*"]))
    return found


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _unsafe_to_fork() -> str | None:
    """Why a fork now would give a broken container, or None (a fork copies only the calling thread)."""
    if _cuda_initialised():
        return "CUDA was initialised while importing the app"
    if _cuda_refuses_forks():
        return "torch read the CUDA devices while importing the app: a fork could not use CUDA"
    if threading.active_count() > 1:
        return "a thread was started while importing the app"
    return None


def _cuda_refuses_forks() -> bool:
    """Whether torch marked forks of this process unable to use CUDA (it does once it asks the driver for the
    device count, which `PYTORCH_NVML_BASED_CUDA_CHECK` spares `is_available`); a forked probe tells."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    probe = _fork()
    if probe == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    return os.waitstatus_to_exitcode(os.waitpid(probe, 0)[1]) != 0


def _serve_forks(control: socket.socket, server_pid: int) -> ForkRequest | None:
    """Answer fork requests until the server closes the socket (None); in a forked container, its request."""
    refusal = _unsafe_to_fork()  # nothing runs here after the imports: what holds now holds for every request
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
        except OSError:
            return None
        if not data:
            return None
        request: ForkRequest = pickle.loads(data)
        reply: tuple[str, object] = ("refused", refusal)
        if refusal is None:
            try:
                pid = _fork_container()
            except OSError as exc:
                reply = ("refused", f"{type(exc).__name__}: {exc}")
            else:
                if pid == 0:
                    _become_container(request, fds, control, server_pid)
                    return request
                reply = ("forked", pid)
        for fd in fds:
            os.close(fd)
        control.send(pickle.dumps(reply))


def _fork_container() -> int:
    """Fork a child that forks the container and exits: the container's pid here, 0 in the container."""
    report_r, report_w = os.pipe()
    middle = _fork()
    if middle == 0:  # the middle process: its only job is to orphan the container
        os.close(report_r)
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(report_w)
            return 0
        os.write(report_w, pid.to_bytes(8, "little"))
        os._exit(0)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        pid_bytes = report.read(8)
    os.waitpid(middle, 0)
    if len(pid_bytes) < 8:
        raise OSError("the container could not be forked")
    return int.from_bytes(pid_bytes, "little")


def _fork() -> int:
    with warnings.catch_warnings():  # Python's threads were refused; native pools (OpenBLAS) stop around a fork
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        return os.fork()


def _become_container(request: ForkRequest, fds: list[int], control: socket.socket, server_pid: int) -> None:
    """In the forked container: its own session, the server as parent, the pipes as stdin/stdout, its env. It
    never returns into the template's loop on a failure: it exits, and the server sees a container that died."""
    try:
        _set_up_container(request, fds, control, server_pid)
    except BaseException:
        os._exit(5)


def _set_up_container(request: ForkRequest, fds: list[int], control: socket.socket, server_pid: int) -> None:
    control.close()
    os.setsid()
    deadline = time.monotonic() + _ADOPTION_S
    while os.getppid() != server_pid:  # the middle process is exiting; the server adopts us then
        if time.monotonic() > deadline:
            os._exit(4)
        time.sleep(0.0005)
    frames_in, frames_out = fds
    os.dup2(frames_in, 0)
    os.dup2(frames_out, 1)
    os.close(frames_in)
    os.close(frames_out)
    os.environ.clear()
    os.environ.update(request.env)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    _reseed()


def _reseed() -> None:
    """Each container draws its own random numbers (`random` reseeds itself after a fork; these do not)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


def _die_with_the_server() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's to handle
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the server died before this process could follow it
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
