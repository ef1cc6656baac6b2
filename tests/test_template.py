"""The container template (`modalkit.runtime.local.template`): containers forked from it, with real processes.

The probe app (tests/apps/fork_probe_app.py) reports from inside its container what the template left it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modalkit.app_loader import ServiceRef, import_app
from modalkit.runtime.local.container import Container
from modalkit.runtime.local.template import (
    SWITCH_ENV,
    ContainerTemplate,
    ForkedProcess,
    close_unadopted,
    launch_early,
)
from tests.conftest import APPS

PROBE = ServiceRef(str(APPS / "fork_probe_app.py"), "ProbeService")
Scenario = Callable[[ContainerTemplate], Awaitable[None]]


@pytest.fixture(autouse=True)
def probe_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALKIT_CONFIG", str(APPS / "fork_probe.yaml"))
    monkeypatch.delenv(SWITCH_ENV, raising=False)


def with_template(scenario: Scenario) -> None:
    async def main() -> None:
        template = ContainerTemplate(PROBE.app_path)
        template.start()
        try:
            await scenario(template)
        finally:
            template.close()

    asyncio.run(main())


async def facts(container: Container) -> dict[str, Any]:
    """What the probe model saw when it loaded, asked through the container's pipes."""
    probe_in = import_app(PROBE.app_path).ProbeIn
    await container.send([probe_in(text="facts")], threads=1)
    results, _ = await container.receive()
    return json.loads(json.loads(results[0])["facts"])  # type: ignore[no-any-return]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children() -> list[int]:
    """This process's children, zombies (ended, not yet reaped) included."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) == os.getpid():
                    found.append(int(entry.name))
            except (OSError, ValueError):
                pass  # it ended meanwhile
    return found


@pytest.fixture
def no_leftover_children() -> Iterator[None]:
    before = set(children())
    yield
    assert set(children()) <= before  # every container forked for the test ended and was reaped


def test_a_forked_container_answers_as_the_servers_own_child(no_leftover_children: None) -> None:
    async def scenario(template: ContainerTemplate) -> None:
        container = Container(PROBE, "probe", {"PROBE_ENV": "given"}, template=template)
        await container.start()
        try:
            assert isinstance(container._proc, ForkedProcess)
            seen = await facts(container)
            assert seen["pid"] == container.pid != template.pid
            assert seen["ppid"] == os.getpid()  # adopted: the server waits for it and kills it, as if spawned
            assert seen["sid"] == container.pid  # a session of its own: the server's Ctrl-C is not its
            assert seen["probe_env"] == "given"
            assert seen["torch_before_load"] is True  # imported in the template (the app imports it in a function)
            assert seen["cuda_initialised_at_load"] is False
            assert seen.get("cuda_sum", 2.0) == 2.0  # on a GPU, CUDA works in the fork
        finally:
            await container.stop()
        assert await container.wait() == 0

    with_template(scenario)


def test_each_container_draws_its_own_random_numbers() -> None:
    async def scenario(template: ContainerTemplate) -> None:
        draws = []
        for _ in range(2):
            container = Container(PROBE, "probe", template=template)
            await container.start()
            draws.append((await facts(container))["random"])
            await container.stop()
        assert draws[0] != draws[1]

    with_template(scenario)


def test_a_killed_container_is_seen_to_die_and_the_next_forks(no_leftover_children: None) -> None:
    async def scenario(template: ContainerTemplate) -> None:
        first = Container(PROBE, "probe", template=template)
        await first.start()
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
        second = Container(PROBE, "probe", template=template)
        await second.start()
        assert isinstance(second._proc, ForkedProcess)
        assert second.pid != first.pid
        assert (await facts(second))["pid"] == second.pid
        await second.stop()

    with_template(scenario)


def test_a_container_outlives_its_template() -> None:
    async def scenario(template: ContainerTemplate) -> None:
        container = Container(PROBE, "probe", template=template)
        await container.start()
        assert template.pid is not None
        template.close()
        assert (await facts(container))["pid"] == container.pid
        await container.stop()

    with_template(scenario)


def test_containers_are_spawned_while_the_template_is_gone_and_it_is_started_again() -> None:
    async def scenario(template: ContainerTemplate) -> None:
        warm = Container(PROBE, "probe", template=template)
        await warm.start()  # the template has imported the app
        await warm.stop()
        dead = template.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        spawned = Container(PROBE, "probe", template=template)
        await spawned.start()
        assert not isinstance(spawned._proc, ForkedProcess)
        assert (await facts(spawned))["argv0"].endswith("worker.py")
        await spawned.stop()
        assert template.pid not in (None, dead)  # a new template, for the containers that come next
        forked = Container(PROBE, "probe", template=template)
        await forked.start()
        assert isinstance(forked._proc, ForkedProcess)
        await forked.stop()

    with_template(scenario)


def test_containers_are_spawned_when_the_template_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH_ENV, "0")

    async def scenario(template: ContainerTemplate) -> None:
        assert template.pid is None and template.unusable is not None
        container = Container(PROBE, "probe", template=template)
        await container.start()
        assert not isinstance(container._proc, ForkedProcess)
        assert (await facts(container))["torch_before_load"] is False
        await container.stop()

    with_template(scenario)


def test_a_template_whose_app_cannot_import_leaves_containers_to_spawn(tmp_path: Path) -> None:
    broken = tmp_path / "broken_app.py"
    broken.write_text("raise RuntimeError('no')\n")

    async def main() -> None:
        template = ContainerTemplate(str(broken))
        template.start()
        try:
            assert await template.fork(PROBE, "probe", dict(os.environ)) is None
        finally:
            template.close()

    asyncio.run(main())


def test_the_templates_imports_leave_cuda_uninitialised() -> None:
    """What the template runs before it forks, in a fresh interpreter: the app, then its libraries, CUDA untouched."""
    code = (
        "import sys; from pathlib import Path\n"
        "from modalkit.app_loader import import_app\n"
        "from modalkit.runtime.local.template_process import warm_imports\n"
        f"import_app({PROBE.app_path!r}); after_app = 'torch' in sys.modules\n"
        f"warm_imports(Path({PROBE.app_path!r})); warmed = 'torch' in sys.modules\n"
        "import torch; print(after_app, warmed, torch.cuda.is_initialized())\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "True", "False"]  # torch, imported in the model's load, is warmed


def test_the_template_launched_early_is_taken_by_one_runtime_or_stopped() -> None:
    launch_early(PROBE.app_path)
    taken = ContainerTemplate.for_app(PROBE.app_path)
    try:
        assert taken.pid is not None
        assert ContainerTemplate.for_app(PROBE.app_path).pid is None  # a second runtime gets its own, unstarted
    finally:
        taken.close()
    launch_early(PROBE.app_path)
    close_unadopted()  # the app was not served by a local runtime
    assert ContainerTemplate.for_app(PROBE.app_path).pid is None
