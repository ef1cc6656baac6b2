"""One translation per Modal target: validated settings in, exactly the arguments Modal 1.6 takes out."""

from __future__ import annotations

import importlib
import json
from importlib import metadata
from typing import TYPE_CHECKING, Any

from modalkit.config.names import APP_POSTFIX_ENV, RESOLVED_CONFIG_ENV
from modalkit.config.sources import dotenv_value
from modalkit.exceptions import ConfigError

if TYPE_CHECKING:
    from modalkit.config.schema import BuildConfig, DeploymentConfig
    from modalkit.config.settings import ModalkitSettings

# Runtime dependencies of modalkit that a Modal image needs when modalkit is not installed as a package: pyproject's
# (tests/test_config_to_modal.py keeps them equal), less modal (Modal's own) and uvicorn (`modalkit serve` only).
_FALLBACK_REQUIREMENTS = [
    "fastapi>=0.164",
    "uvloop>=0.19; sys_platform != 'win32'",
    "httptools>=0.6",
    "pydantic>=2.10",
    "pydantic-settings>=2.3",
    "pyyaml>=6",
    "click>=8.1",
    "redis>=5",
    "prometheus-client>=0.20",
    "httpx>=0.27",
    "python-multipart>=0.0.9",
    "tqdm>=4.60",
    "opentelemetry-sdk>=1.44",
    "watchfiles>=0.19",
]


def modalkit_requirements() -> list[str]:
    try:
        requires = metadata.requires("modalkit") or []
    except metadata.PackageNotFoundError:
        return list(_FALLBACK_REQUIREMENTS)
    base = [r for r in requires if "extra ==" not in r]
    # Modal installs its own client in every container; uvicorn only serves `modalkit serve`.
    return [r for r in base if not r.startswith(("modal>", "modal=", "modal<", "uvicorn"))]


_EXTRAS_FALLBACK = {"aws": ["boto3>=1.28"], "taskiq": ["taskiq>=0.13", "taskiq-redis>=1.2.4"]}


def extra_requirements(settings: ModalkitSettings) -> list[str]:
    """Optional packages the config needs in the image: boto3 for sqs and ssm_key, taskiq for taskiq."""
    app = settings.app_settings
    extras = {"aws"} if app.queue_config.backend == "sqs" or app.auth_config.ssm_key else set()
    extras |= {"taskiq"} if app.queue_config.backend == "taskiq" else set()
    try:
        requires = metadata.requires("modalkit") or []
    except metadata.PackageNotFoundError:
        return [r for extra in sorted(extras) for r in _EXTRAS_FALLBACK[extra]]
    return [r.split(";")[0].strip() for r in requires if any(f'extra == "{e}"' in r for e in extras)]


def build_image(settings: ModalkitSettings) -> Any:

    build = settings.app_settings.build_config
    img = _base_image(build)
    if build.env:
        img = img.env(build.env)
    if build.apt_packages:
        img = img.apt_install(*build.apt_packages)
    img = img.pip_install(*modalkit_requirements(), *extra_requirements(settings))
    if build.pip_packages:
        img = img.pip_install(*build.pip_packages)
    if build.run_commands:
        img = img.run_commands(*build.run_commands)
    if build.model_download is not None:
        step = build.model_download
        img = img.run_function(
            _import_function(step.function),
            kwargs=step.kwargs,
            secrets=_modal_secrets(step.secrets),
            gpu=step.gpu,
            timeout=step.timeout,
        )
    if build.workdir:
        img = img.workdir(build.workdir)
    # Last: the resolved config changes often, and every layer after it would be rebuilt.
    resolved = {RESOLVED_CONFIG_ENV: resolved_config_json(settings)}
    postfix = dotenv_value(APP_POSTFIX_ENV)
    if postfix is not None:  # the containers name the app as the deploy did
        resolved[APP_POSTFIX_ENV] = postfix
    img = img.env(resolved)
    # add_local_* steps must come last: Modal adds them when a container starts instead of building a layer.
    for entry in build.add_local:
        if entry.type == "dir":
            img = img.add_local_dir(entry.local_path, entry.remote_path, copy=entry.copy_)
        else:
            img = img.add_local_file(entry.local_path, entry.remote_path, copy=entry.copy_)
    return img.add_local_python_source("modalkit", *build.add_python_sources)


def _base_image(build: BuildConfig) -> Any:
    import modal

    if build.dockerfile is not None:
        return modal.Image.from_dockerfile(build.dockerfile, add_python=build.add_python)
    if build.registry_image is not None:
        return modal.Image.from_registry(build.registry_image, add_python=build.add_python)
    return modal.Image.debian_slim(python_version=build.python_version)


def _import_function(reference: str) -> Any:
    module_name, _, name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            [f"app_settings.build_config.model_download.function: cannot import {reference!r}: {exc}"]
        ) from None


def resolved_config_json(settings: ModalkitSettings) -> str:
    """The config as the containers will read it. A literal API key is not baked into the image: the
    containers expect it in MODALKIT_API_KEY (from a Modal secret) and refuse to start without it."""
    data = settings.model_dump(mode="json", by_alias=True)
    auth = data["app_settings"]["auth_config"]
    if auth.get("api_key") is not None:
        auth["api_key"] = None
        auth["api_key_env"] = "MODALKIT_API_KEY"
    return json.dumps(data, sort_keys=True)


def app_cls_settings(settings: ModalkitSettings) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    kwargs: dict[str, Any] = {
        "image": build_image(settings),
        "timeout": deploy.timeout,
        "min_containers": deploy.min_containers,
        "scaledown_window": deploy.scaledown_window,
    }
    optional = {
        "gpu": deploy.gpu,
        "cpu": deploy.cpu,
        "memory": deploy.memory,
        "ephemeral_disk": deploy.ephemeral_disk,
        "startup_timeout": deploy.startup_timeout,
        "max_containers": deploy.max_containers,
        "buffer_containers": deploy.buffer_containers,
        "region": deploy.region,
        "cloud": deploy.cloud,
        "retries": _modal_retries(deploy),
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if deploy.enable_memory_snapshot:
        kwargs["enable_memory_snapshot"] = True
    webhook_secret = settings.app_settings.webhook_config.modal_secret  # the container signs its job's webhook
    names = [*deploy.secrets, *([webhook_secret] if webhook_secret else [])]
    if names:
        kwargs["secrets"] = _modal_secrets(names)
    mounts = modal_volumes(deploy)
    if mounts:
        kwargs["volumes"] = mounts
    return kwargs


def handler_settings(settings: ModalkitSettings) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    auth = settings.app_settings.auth_config
    webhook_secret = settings.app_settings.webhook_config.modal_secret
    clients = [client.api_key_secret for client in auth.clients.values()]  # each client's key, in its own secret
    extra = [name for name in (auth.api_key_secret, webhook_secret, *clients) if name]
    names = list(dict.fromkeys([*deploy.secrets, *extra]))  # a secret shared by two clients is attached once
    kwargs: dict[str, Any] = {"image": build_image(settings), "timeout": deploy.timeout}
    if names:
        kwargs["secrets"] = _modal_secrets(names)
    return kwargs


def asgi_app_settings(settings: ModalkitSettings) -> dict[str, Any]:
    return {"requires_proxy_auth": settings.app_settings.deployment_config.secure}


def batched_settings(settings: ModalkitSettings) -> dict[str, Any]:
    batch = settings.app_settings.batch_config
    return {"max_batch_size": batch.max_batch_size, "wait_ms": batch.wait_ms}


def concurrent_settings(settings: ModalkitSettings, handler: bool = False) -> dict[str, Any]:
    deploy = settings.app_settings.deployment_config
    return {"max_inputs": deploy.max_concurrent_inputs_handler if handler else deploy.max_concurrent_inputs}


def enter_settings(settings: ModalkitSettings) -> dict[str, Any]:
    """`@modal.enter` arguments of load_artefacts: with memory snapshots it runs before the snapshot."""
    return {"snap": True} if settings.app_settings.deployment_config.enable_memory_snapshot else {}


def _modal_retries(deploy: DeploymentConfig) -> Any:
    import modal

    if deploy.retries is None or isinstance(deploy.retries, int):
        return deploy.retries
    policy = deploy.retries
    return modal.Retries(
        max_retries=policy.max_retries,
        backoff_coefficient=policy.backoff_coefficient,
        initial_delay=policy.initial_delay,
        max_delay=policy.max_delay,
    )


def _modal_secrets(names: list[str]) -> list[Any]:
    import modal

    return [modal.Secret.from_name(name) for name in names]


def modal_volumes(deploy: DeploymentConfig) -> dict[str, Any]:
    import modal

    mounts: dict[str, Any] = {
        path: modal.Volume.from_name(name, create_if_missing=True) for path, name in deploy.volumes.items()
    }
    for bucket in deploy.cloud_bucket_mounts:
        mounts[bucket.mount_point] = modal.CloudBucketMount(
            bucket_name=bucket.bucket_name,
            bucket_endpoint_url=bucket.bucket_endpoint_url,
            key_prefix=bucket.key_prefix,
            secret=modal.Secret.from_name(bucket.secret) if bucket.secret else None,
            oidc_auth_role_arn=bucket.oidc_auth_role_arn,
            read_only=bucket.read_only,
            requester_pays=bucket.requester_pays,
        )
    return mounts
