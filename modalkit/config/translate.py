"""One translation per Modal target: validated settings in, exactly the arguments Modal 1.6 takes out."""

from __future__ import annotations

import json
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modalkit.config.settings import ModalkitSettings

# Runtime dependencies of modalkit that a Modal image needs; Modal installs its own client.
_FALLBACK_REQUIREMENTS = [
    "fastapi>=0.110",
    "pydantic>=2.7",
    "pydantic-settings>=2.3",
    "pyyaml>=6",
    "opentelemetry-sdk>=1.25",
    "opentelemetry-instrumentation-fastapi>=0.46b0",
]


def modalkit_requirements() -> list[str]:
    try:
        requires = metadata.requires("modalkit") or []
    except metadata.PackageNotFoundError:
        return list(_FALLBACK_REQUIREMENTS)
    base = [r for r in requires if "extra ==" not in r]
    return [r for r in base if not r.startswith(("modal>", "modal=", "modal<", "uvicorn"))]


def image(settings: ModalkitSettings) -> Any:
    import modal

    build = settings.app_settings.build_config
    img = modal.Image.debian_slim(python_version=build.python_version)
    if build.apt_packages:
        img = img.apt_install(*build.apt_packages)
    img = img.pip_install(*modalkit_requirements())
    if build.pip_packages:
        img = img.pip_install(*build.pip_packages)
    if build.run_commands:
        img = img.run_commands(*build.run_commands)
    from modalkit.config.settings import RESOLVED_CONFIG_ENV

    img = img.env({**build.env, RESOLVED_CONFIG_ENV: resolved_config_json(settings)})
    if build.workdir:
        img = img.workdir(build.workdir)
    # add_local_* steps must come last: Modal mounts them at container start instead of building a layer.
    return img.add_local_python_source("modalkit")


def resolved_config_json(settings: ModalkitSettings) -> str:
    return json.dumps(settings.model_dump(mode="json"), sort_keys=True)


def app_cls_settings(settings: ModalkitSettings) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    kwargs: dict[str, Any] = {
        "image": image(settings),
        "timeout": deploy.timeout,
        "min_containers": deploy.min_containers,
        "scaledown_window": deploy.scaledown_window,
    }
    optional = {
        "gpu": deploy.gpu,
        "cpu": deploy.cpu,
        "memory": deploy.memory,
        "max_containers": deploy.max_containers,
        "buffer_containers": deploy.buffer_containers,
        "region": deploy.region,
        "retries": deploy.retries,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs.update(_secrets_and_volumes(settings))
    return kwargs


def handler_settings(settings: ModalkitSettings) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    return {
        "image": image(settings),
        "timeout": deploy.timeout,
        **_secrets_and_volumes(settings, volumes=False),
    }


def asgi_app_settings(settings: ModalkitSettings) -> dict[str, Any]:
    return {}


def batched_settings(settings: ModalkitSettings) -> dict[str, Any]:
    batch = settings.app_settings.batch_config
    return {"max_batch_size": batch.max_batch_size, "wait_ms": batch.wait_ms}


def concurrent_settings(settings: ModalkitSettings, handler: bool = False) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    return {"max_inputs": deploy.max_concurrent_inputs_handler if handler else deploy.max_concurrent_inputs}


def _secrets_and_volumes(settings: ModalkitSettings, volumes: bool = True) -> dict[str, Any]:
    import modal

    deploy = settings.app_settings.deployment_config
    out: dict[str, Any] = {}
    if deploy.secrets:
        out["secrets"] = [modal.Secret.from_name(name) for name in deploy.secrets]
    if volumes and deploy.volumes:
        out["volumes"] = {
            path: modal.Volume.from_name(name, create_if_missing=True) for path, name in deploy.volumes.items()
        }
    return out
