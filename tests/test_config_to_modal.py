"""Every YAML key, the Modal argument it becomes (checked on real objects built offline), and a bad value
for each that fails with the key's path."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from modal._partial_function import _PartialFunctionFlags

from modalkit.app_loader import import_app, user_class
from modalkit.config import ModalConfig
from modalkit.exceptions import ConfigError
from tests.conftest import APPS, ROOT
from tests.modal_introspect import autoscaler, definition, image_steps, python_sources, raw

ENTER_PRE_SNAPSHOT = _PartialFunctionFlags.ENTER_PRE_SNAPSHOT
ENTER_POST_SNAPSHOT = _PartialFunctionFlags.ENTER_POST_SNAPSHOT
BASE = "app_settings:\n  app_prefix: table\n{body}model_settings:\n  model_entries: {{echo: {{}}}}\n"


@dataclass
class Built:
    module: Any

    @property
    def service(self) -> Any:
        return self.module.EchoService._get_class_service_function()

    @property
    def info(self) -> Any:
        return self.service.info()

    @property
    def web(self) -> Any:
        return self.module.web.info()

    @property
    def handler_info(self) -> Any:
        return self.module.web.info()

    @property
    def steps(self) -> list[str]:
        return image_steps(raw(self.service)._spec.image)

    @property
    def sources(self) -> frozenset[str]:
        return python_sources(raw(self.service)._spec.image)


def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str) -> Built:
    config = tmp_path / "modalkit.yaml"
    config.write_text(BASE.format(body=section))
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    return Built(import_app(APPS / "echo_app.py"))


def any_step(built: Built, *parts: str) -> bool:
    return any(all(p in step for p in parts) for step in built.steps)


Check = Callable[[Built], Any]
# (YAML under app_settings, what the built Modal objects must show)
GOOD: dict[str, tuple[str, Check]] = {
    "build_config.image+tag+add_python": (
        "  build_config: {image: nvidia/cuda, tag: 12.4.1-runtime-ubuntu22.04, add_python: '3.11'}\n",
        lambda b: b.steps[0] == "FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04" and any_step(b, "python", "3.11"),
    ),
    "build_config.dockerfile": (
        "  build_config: {dockerfile: Dockerfile, add_python: '3.12'}\n",
        lambda b: b.steps[:2] == ["FROM debian:bookworm", "RUN echo from-dockerfile"] and "ADD_PYTHON 3.12" in b.steps,
    ),
    "build_config.python_version": (
        "  build_config: {python_version: '3.12'}\n",
        lambda b: "python:3.12" in b.steps[0],
    ),
    "build_config.pip_packages": (
        "  build_config: {pip_packages: [numpy==2.1.0]}\n",
        lambda b: any_step(b, "pip install", "numpy==2.1.0"),
    ),
    "build_config.apt_packages": (
        "  build_config: {apt_packages: [ffmpeg]}\n",
        lambda b: any_step(b, "apt-get install", "ffmpeg"),
    ),
    "build_config.run_commands": (
        "  build_config: {run_commands: ['echo built']}\n",
        lambda b: "RUN echo built" in b.steps,
    ),
    "build_config.extra_run_commands (old)": (
        "  build_config: {extra_run_commands: 'echo old'}\n",
        lambda b: "RUN echo old" in b.steps,
    ),
    "build_config.env": ("  build_config: {env: {FOO: bar}}\n", lambda b: "ENV FOO=bar" in b.steps),
    "build_config.workdir": ("  build_config: {workdir: /srv}\n", lambda b: "WORKDIR /srv" in b.steps),
    "build_config.add_local": (
        "  build_config:\n    add_local:\n      - {local_path: weights.bin, remote_path: /root/weights.bin}\n"
        "      - {local_path: assets, remote_path: /root/assets, type: dir}\n",
        lambda b: "ADD_LOCAL /root/weights.bin" in b.steps and "ADD_LOCAL /root/assets" in b.steps,
    ),
    "deployment_config.mounts (old)": (
        "  deployment_config:\n    mounts: [{local_path: weights.bin, remote_path: /root/w.bin}]\n",
        lambda b: "ADD_LOCAL /root/w.bin" in b.steps,
    ),
    "build_config.add_python_sources": (
        "  build_config: {add_python_sources: [json]}\n",
        lambda b: b.sources == {"modalkit", "json"},
    ),
    "build_config.model_download": (
        "  build_config:\n    model_download: {function: 'tests.apps.download:fetch_weights', kwargs: {revision: v2}}\n",
        lambda b: "RUN_FUNCTION fetch_weights" in b.steps,
    ),
    "deployment_config.gpu": ("  deployment_config: {gpu: l40s}\n", lambda b: b.info.gpus == [("L40S", 1)]),
    "deployment_config.gpu TYPE:N": ("  deployment_config: {gpu: 'H100:4'}\n", lambda b: b.info.gpus == [("H100", 4)]),
    "deployment_config.gpu fallbacks": (
        "  deployment_config: {gpu: [H100, A100-80GB]}\n",
        lambda b: b.info.gpus == [("H100", 1), ("A100-80GB", 1)],
    ),
    "deployment_config.cpu": ("  deployment_config: {cpu: 2.5}\n", lambda b: b.info.cpu == 2.5),
    "deployment_config.cpu request/limit": ("  deployment_config: {cpu: [1, 4]}\n", lambda b: b.info.cpu == (1, 4)),
    "deployment_config.memory": ("  deployment_config: {memory: 4096}\n", lambda b: b.info.memory_mib == 4096),
    "deployment_config.memory request/limit": (
        "  deployment_config: {memory: [1024, 8192]}\n",
        lambda b: b.info.memory_mib == (1024, 8192),
    ),
    "deployment_config.ephemeral_disk": (
        "  deployment_config: {ephemeral_disk: 524288}\n",
        lambda b: b.info.ephemeral_disk_mib == 524288,
    ),
    "deployment_config.timeout": ("  deployment_config: {timeout: 900}\n", lambda b: b.info.timeout == 900),
    "deployment_config.startup_timeout": (
        "  deployment_config: {startup_timeout: 1200}\n",
        lambda b: b.info.startup_timeout == 1200,
    ),
    "deployment_config.retries": ("  deployment_config: {retries: 3}\n", lambda b: b.info.max_retries == 3),
    "deployment_config.retries policy": (
        "  deployment_config: {retries: {max_retries: 4, backoff_coefficient: 3.0, initial_delay: 2.0}}\n",
        lambda b: b.info.max_retries == 4 and definition(b.service)["retry_policy"].backoff_coefficient == 3.0,
    ),
    "deployment_config.region": (
        "  deployment_config: {region: us-west-2}\n",
        lambda b: b.info.regions == ["us-west-2"],
    ),
    "deployment_config.region list": (
        "  deployment_config: {region: [us-east, eu]}\n",
        lambda b: b.info.regions == ["us-east", "eu"],
    ),
    "deployment_config.cloud": ("  deployment_config: {cloud: gcp}\n", lambda b: b.info.cloud == "gcp"),
    "deployment_config.min_containers": (
        "  deployment_config: {min_containers: 2}\n",
        lambda b: autoscaler(b.service).min_containers == 2,
    ),
    "deployment_config.max_containers": (
        "  deployment_config: {max_containers: 7}\n",
        lambda b: autoscaler(b.service).max_containers == 7,
    ),
    "deployment_config.buffer_containers": (
        "  deployment_config: {buffer_containers: 1}\n",
        lambda b: autoscaler(b.service).buffer_containers == 1,
    ),
    "deployment_config.scaledown_window": (
        "  deployment_config: {scaledown_window: 900}\n",
        lambda b: autoscaler(b.service).scaledown_window == 900,
    ),
    "deployment_config.max_concurrent_inputs": (
        "  deployment_config: {max_concurrent_inputs: 4}\n",
        lambda b: b.info.concurrency_info.max_inputs == 4,
    ),
    "deployment_config.max_concurrent_inputs_handler": (
        "  deployment_config: {max_concurrent_inputs_handler: 250}\n",
        lambda b: b.web.concurrency_info.max_inputs == 250,
    ),
    "deployment_config.secrets": (
        "  deployment_config: {secrets: [hf-token]}\n",
        lambda b: any("hf-token" in s for s in b.info.secrets) and any("hf-token" in s for s in b.web.secrets),
    ),
    "deployment_config.volumes": (
        "  deployment_config: {volumes: {/models: weights}}\n",
        lambda b: b.info.volumes["/models"].name == "weights",
    ),
    "deployment_config.cloud_bucket_mounts": (
        "  deployment_config:\n    cloud_bucket_mounts:\n      - {mount_point: /data, bucket_name: my-bucket, "
        "bucket_endpoint_url: 'https://acc.r2.cloudflarestorage.com', key_prefix: models/, read_only: true}\n",
        lambda b: (
            b.info.cloud_bucket_mounts["/data"].bucket_name == "my-bucket"
            and b.info.cloud_bucket_mounts["/data"].read_only
            and b.info.cloud_bucket_mounts["/data"].key_prefix == "models/"
        ),
    ),
    "deployment_config.enable_memory_snapshot": (
        "  deployment_config: {enable_memory_snapshot: true}\n",
        lambda b: (
            definition(b.service)["enable_memory_snapshot"] is True
            and raw(user_class(b.module.EchoService).__dict__["load_artefacts"]).flags == ENTER_PRE_SNAPSHOT
            and raw(user_class(b.module.EchoService).__dict__["restore_artefacts"]).flags == ENTER_POST_SNAPSHOT
        ),
    ),
    "deployment_config.secure": (
        "  deployment_config: {secure: true}\n",
        lambda b: b.web.web_info.unauthenticated is False,
    ),
    "batch_config": (
        "  batch_config: {max_batch_size: 64, wait_ms: 250}\n",
        lambda b: (b.info.batching_info.max_batch_size, b.info.batching_info.wait_ms) == (64, 250),
    ),
    "auth_config.api_key_secret": (
        "  auth_config: {api_key_env: SERVICE_KEY, api_key_secret: service-key}\n",
        lambda b: (
            any("service-key" in s for s in b.web.secrets) and not any("service-key" in s for s in b.info.secrets)
        ),
    ),
    "webhook_config.modal_secret": (  # the container signs its jobs' webhooks; the web function checks the secret
        "  webhook_config: {modal_secret: hook-secret}\n",
        lambda b: any("hook-secret" in s for s in b.web.secrets) and any("hook-secret" in s for s in b.info.secrets),
    ),
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "assets").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm\nRUN echo from-dockerfile\n")
    return tmp_path


@pytest.mark.parametrize("key", list(GOOD))
def test_key_reaches_modal(key: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section, check = GOOD[key]
    built = build(workdir, monkeypatch, section)
    assert check(built), f"{key}: not found in the built Modal objects"


BAD: dict[str, tuple[str, str]] = {
    "build_config.image": (
        "  build_config: {image: nvidia/cuda, dockerfile: Dockerfile}\n",
        "app_settings.build_config",
    ),
    "build_config.tag": ("  build_config: {tag: '12.4'}\n", "app_settings.build_config"),
    "build_config.python_version": (
        "  build_config: {python_version: '2.7'}\n",
        "app_settings.build_config.python_version",
    ),
    "build_config.add_python": ("  build_config: {add_python: py3}\n", "app_settings.build_config.add_python"),
    "build_config.pip_packages": ("  build_config: {pip_packages: numpy}\n", "app_settings.build_config.pip_packages"),
    "build_config.apt_packages": ("  build_config: {apt_packages: {a: b}}\n", "app_settings.build_config.apt_packages"),
    "build_config.run_commands": ("  build_config: {run_commands: 3}\n", "app_settings.build_config.run_commands"),
    "build_config.env": ("  build_config: {env: [A]}\n", "app_settings.build_config.env"),
    "build_config.workdir": ("  build_config: {workdir: [a]}\n", "app_settings.build_config.workdir"),
    "build_config.add_local": (
        "  build_config: {add_local: [{local_path: x}]}\n",
        "app_settings.build_config.add_local.0.remote_path",
    ),
    "build_config.add_local.type": (
        "  build_config: {add_local: [{local_path: x, remote_path: /x, type: pipe}]}\n",
        "app_settings.build_config.add_local.0.type",
    ),
    "build_config.model_download": (
        "  build_config: {model_download: {function: no_colon}}\n",
        "app_settings.build_config.model_download.function",
    ),
    "deployment_config.gpu": ("  deployment_config: {gpu: Z99}\n", "app_settings.deployment_config.gpu"),
    "deployment_config.gpu count": ("  deployment_config: {gpu: 'T4:9'}\n", "app_settings.deployment_config.gpu"),
    "deployment_config.gpu list": ("  deployment_config: {gpu: []}\n", "app_settings.deployment_config.gpu"),
    "deployment_config.cpu": ("  deployment_config: {cpu: -1}\n", "app_settings.deployment_config.cpu"),
    "deployment_config.memory": (
        "  deployment_config: {memory: [8192, 1024]}\n",
        "app_settings.deployment_config.memory",
    ),
    "deployment_config.ephemeral_disk": (
        "  deployment_config: {ephemeral_disk: 0}\n",
        "app_settings.deployment_config.ephemeral_disk",
    ),
    "deployment_config.timeout": ("  deployment_config: {timeout: 0}\n", "app_settings.deployment_config.timeout"),
    "deployment_config.startup_timeout": (
        "  deployment_config: {startup_timeout: 0}\n",
        "app_settings.deployment_config.startup_timeout",
    ),
    "deployment_config.retries": ("  deployment_config: {retries: 11}\n", "app_settings.deployment_config.retries"),
    "deployment_config.retries policy": (
        "  deployment_config: {retries: {max_retries: 2, initial_delay: 100}}\n",
        "app_settings.deployment_config.retries.RetryPolicy.initial_delay",
    ),
    "deployment_config.region": ("  deployment_config: {region: 5}\n", "app_settings.deployment_config.region"),
    "deployment_config.cloud": ("  deployment_config: {cloud: azure}\n", "app_settings.deployment_config.cloud"),
    "deployment_config.min_containers": (
        "  deployment_config: {min_containers: -1}\n",
        "app_settings.deployment_config.min_containers",
    ),
    "deployment_config.max_containers": (
        "  deployment_config: {max_containers: 0}\n",
        "app_settings.deployment_config.max_containers",
    ),
    "deployment_config.buffer_containers": (
        "  deployment_config: {buffer_containers: -1}\n",
        "app_settings.deployment_config.buffer_containers",
    ),
    "deployment_config.scaledown_window": (
        "  deployment_config: {scaledown_window: 4000}\n",
        "app_settings.deployment_config.scaledown_window",
    ),
    "deployment_config.max_concurrent_inputs": (
        "  deployment_config: {max_concurrent_inputs: 0}\n",
        "app_settings.deployment_config.max_concurrent_inputs",
    ),
    "deployment_config.max_concurrent_inputs_handler": (
        "  deployment_config: {max_concurrent_inputs_handler: 0}\n",
        "app_settings.deployment_config.max_concurrent_inputs_handler",
    ),
    "deployment_config.secrets": (
        "  deployment_config: {secrets: hf-token}\n",
        "app_settings.deployment_config.secrets",
    ),
    "deployment_config.volumes": (
        "  deployment_config: {volumes: {models: weights}}\n",
        "app_settings.deployment_config.volumes",
    ),
    "deployment_config.volume_reload_interval_seconds": (
        "  deployment_config: {volume_reload_interval_seconds: -2}\n",
        "app_settings.deployment_config.volume_reload_interval_seconds",
    ),
    "deployment_config.cloud_bucket_mounts": (
        "  deployment_config: {cloud_bucket_mounts: [{mount_point: data, bucket_name: b}]}\n",
        "app_settings.deployment_config.cloud_bucket_mounts.0.mount_point",
    ),
    "deployment_config.enable_memory_snapshot": (
        "  deployment_config: {enable_memory_snapshot: maybe}\n",
        "app_settings.deployment_config.enable_memory_snapshot",
    ),
    "deployment_config.secure": ("  deployment_config: {secure: maybe}\n", "app_settings.deployment_config.secure"),
    "batch_config.max_batch_size": (
        "  batch_config: {max_batch_size: 1001}\n",
        "app_settings.batch_config.max_batch_size",
    ),
    "batch_config.wait_ms": ("  batch_config: {wait_ms: -1}\n", "app_settings.batch_config.wait_ms"),
    "auth_config.api_key_secret": ("  auth_config: {api_key_secret: s}\n", "app_settings.auth_config"),
    "auth_config.header": (
        "  auth_config: {api_key_env: K, header: 'bad header'}\n",
        "app_settings.auth_config.header",
    ),
    "queue_config.backend": ("  queue_config: {backend: 'my queue'}\n", "app_settings.queue_config.backend"),
    "pricing.gpu_per_second": ("  pricing: {gpu_per_second: {Z99: 1.0}}\n", "app_settings.pricing.gpu_per_second"),
}


@pytest.mark.parametrize("key", list(BAD))
def test_bad_value_names_the_key(key: str, tmp_path: Path) -> None:
    section, path = BAD[key]
    config = tmp_path / "modalkit.yaml"
    config.write_text(BASE.format(body=section))
    with pytest.raises(ConfigError) as info:
        ModalConfig(config)
    assert f"{config}: {path}" in str(info.value)


def test_modalkit_deployment_guide_yaml_builds_a_real_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML of ModalKit's deployment guide, word for word (plus the model entry our app needs)."""
    guide = (
        'app_settings:\n  deployment_config:\n    region: "us-west-2"\n    gpu: "T4"\n    concurrency_limit: 5\n'
        "    container_idle_timeout: 180\n    allow_concurrent_inputs: 1\n    allow_concurrent_inputs_handler: 10\n"
        "  batch_config:\n    max_batch_size: 1\n    wait_ms: 1000\n"
        "model_settings:\n  model_entries: {echo: {}}\n"
    )
    config = tmp_path / "modalkit.yaml"
    config.write_text(guide)
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    with pytest.warns(FutureWarning):
        built = Built(import_app(APPS / "echo_app.py"))
    info = built.info
    assert (info.regions, info.gpus) == (["us-west-2"], [("T4", 1)])
    assert (autoscaler(built.service).max_containers, autoscaler(built.service).scaledown_window) == (5, 180)
    assert info.concurrency_info.max_inputs == 1 and built.web.concurrency_info.max_inputs == 10
    assert (info.batching_info.max_batch_size, info.batching_info.wait_ms) == (1, 1000)


def test_modal_parameters_must_have_a_modal_type(tmp_path: Path) -> None:
    app_file = tmp_path / "float_param_app.py"
    app_file.write_text(
        "import modal\nfrom modalkit import ModalConfig, ModalService, InferenceBase\n"
        f"config = ModalConfig({str(APPS / 'echo.yaml')!r})\n"
        "class Bad(ModalService):\n    inference_implementation = InferenceBase\n"
        "    temperature: float = modal.parameter(default=0.5)\n    modal_config = config\n"
    )
    with pytest.raises(ConfigError, match=r"Bad.temperature: modal.parameter must be int, str, bytes or bool"):
        import_app(app_file)


def test_the_image_requirements_without_package_metadata_are_pyprojects() -> None:
    import tomllib

    from modalkit.config import translate

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith(("modal>", "uvicorn"))]
    assert deps == translate._FALLBACK_REQUIREMENTS
    extras = project["optional-dependencies"]
    assert {"aws": extras["aws"], "taskiq": extras["taskiq"]} == translate._EXTRAS_FALLBACK
