"""The schema of `modalkit.yaml`: data only; translation to Modal arguments lives in `translate.py`."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from modalkit.config import pricing
from modalkit.exceptions import ConfigDeprecationWarning, ConfigWarning

GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
)
_GPU_RE = re.compile(r"^(?P<type>[A-Z0-9+!-]+?)(?::(?P<count>\d+))?$")

# Old ModalKit / Modal < 1.0 names and the Modal 1.6 key each became.
DEPRECATED_DEPLOYMENT_KEYS = {
    "concurrency_limit": "max_containers",
    "keep_warm": "min_containers",
    "container_idle_timeout": "scaledown_window",
    "allow_concurrent_inputs": "max_concurrent_inputs",
    "allow_concurrent_inputs_handler": "max_concurrent_inputs_handler",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def normalize_gpu(value: str) -> str:
    match = _GPU_RE.match(value.strip().upper())
    if not match or match["type"] not in GPU_TYPES:
        raise ValueError(f"unknown GPU {value!r}; use one of {', '.join(GPU_TYPES)}, optionally with ':N' (N 1-8)")
    count = match["count"]
    if count is not None and not 1 <= int(count) <= 8:
        raise ValueError(f"GPU count in {value!r} must be between 1 and 8")
    return match["type"] + (f":{count}" if count else "")


class LocalPath(Section):
    """A local file or directory put into the image (`add_local_file` / `add_local_dir`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    local_path: str
    remote_path: str
    type: Literal["file", "dir"] = "file"
    # copy: true builds a layer; false (default) adds the files when a container starts: faster to iterate.
    copy_: bool = Field(False, alias="copy")


class ModelDownload(Section):
    """A build step (`Image.run_function`) that bakes weights into the image, so cold starts skip the download."""

    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    kwargs: dict[str, Any] = {}
    secrets: list[str] = []
    gpu: str | None = None
    timeout: int = Field(3600, ge=1, le=86400)

    @field_validator("gpu", mode="before")
    @classmethod
    def _normalize_gpu(cls, value: Any) -> Any:
        return normalize_gpu(value) if isinstance(value, str) else value


class BuildConfig(Section):
    # "debian_slim", or a registry image ("nvidia/cuda:12.4.1-runtime-ubuntu22.04"; ModalKit's image + tag).
    image: str = "debian_slim"
    tag: str | None = None
    dockerfile: str | None = None
    python_version: str = Field("3.11", pattern=r"^3\.\d+$")
    add_python: str | None = Field(None, pattern=r"^3\.\d+$")
    apt_packages: list[str] = []
    pip_packages: list[str] = []
    run_commands: list[str] = []
    env: dict[str, str] = {}
    workdir: str | None = None
    add_local: list[LocalPath] = []
    add_python_sources: list[str] = []
    model_download: ModelDownload | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "extra_run_commands" in data:
            data = dict(data)
            _warn_renamed("build_config.extra_run_commands", "build_config.run_commands")
            extra = data.pop("extra_run_commands")
            data["run_commands"] = list(data.get("run_commands", [])) + (
                [extra] if isinstance(extra, str) else list(extra)
            )
        return data

    @model_validator(mode="after")
    def _image_or_dockerfile(self) -> BuildConfig:
        if self.dockerfile is not None and self.image != "debian_slim":
            raise ValueError("set either image (a registry image) or dockerfile, not both")
        if self.tag is not None and self.image == "debian_slim":
            raise ValueError("tag needs image to name a registry image")
        return self

    @model_validator(mode="after")
    def _warn_unused_tag(self) -> BuildConfig:
        if self.tag is not None and _has_tag(self.image):
            warnings.warn(
                ConfigWarning(
                    "app_settings.build_config.tag",
                    f"{self.tag!r} is not used: image {self.image!r} already names its tag or digest",
                ),
                stacklevel=2,
            )
        return self

    @property
    def registry_image(self) -> str | None:
        if self.image == "debian_slim":
            return None
        return f"{self.image}:{self.tag}" if self.tag and not _has_tag(self.image) else self.image


def _has_tag(image: str) -> bool:
    """`python:3.11-slim`, `ghcr.io/org/img:1`, `img@sha256:...` carry a tag; `localhost:5000/img` does not."""
    return "@" in image or ":" in image.rsplit("/", 1)[-1]


class RetryPolicy(Section):
    max_retries: int = Field(ge=0, le=10)
    backoff_coefficient: float = Field(2.0, ge=1.0, le=10.0)
    initial_delay: float = Field(1.0, ge=0, le=60)
    max_delay: float = Field(60.0, ge=1, le=60)


class CloudBucketMount(Section):
    """An S3, GCS or R2 bucket mounted as a folder (as ModalKit's cloud_bucket_mounts)."""

    mount_point: str = Field(pattern=r"^/")
    bucket_name: str = Field(min_length=1)
    bucket_endpoint_url: str | None = None  # required for R2 and GCS
    key_prefix: str | None = Field(None, pattern=r"/$")
    secret: str | None = None  # a Modal secret with the credentials
    oidc_auth_role_arn: str | None = None
    read_only: bool = False
    requester_pays: bool = False


class DeploymentConfig(Section):
    gpu: str | list[str] | None = None
    cpu: float | tuple[float, float] | None = None
    memory: int | tuple[int, int] | None = None
    ephemeral_disk: int | None = Field(None, ge=1)
    timeout: int = Field(300, ge=1, le=86400)
    startup_timeout: int | None = Field(None, ge=1, le=86400)
    retries: int | RetryPolicy | None = Field(None)
    region: str | list[str] | None = None
    cloud: Literal["aws", "gcp", "oci", "auto"] | None = None
    min_containers: int = Field(0, ge=0)
    max_containers: int | None = Field(None, ge=1)
    buffer_containers: int | None = Field(None, ge=0)
    scaledown_window: int = Field(60, ge=2, le=3600)
    max_concurrent_inputs: int = Field(1, ge=1, le=1000)
    max_concurrent_inputs_handler: int = Field(100, ge=1, le=1000)
    secrets: list[str] = []
    volumes: dict[str, str] = {}  # mount path -> volume name
    # None: never; N > 0: every N seconds; 0 or -1 (ModalKit's default): before every batch.
    volume_reload_interval_seconds: int | None = Field(None, ge=-1)
    cloud_bucket_mounts: list[CloudBucketMount] = []
    enable_memory_snapshot: bool = False
    secure: bool = False  # Modal proxy auth: callers send Modal-Key and Modal-Secret headers

    @model_validator(mode="before")
    @classmethod
    def _accept_old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in DEPRECATED_DEPLOYMENT_KEYS.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"both {old!r} and its new name {new!r} are set; keep only {new!r}")
            _warn_renamed(f"deployment_config.{old}", f"deployment_config.{new}")
            value = data.pop(old)
            # allow_concurrent_inputs: true meant "some concurrency" in old ModalKit configs.
            data[new] = 100 if value is True else value
        return data

    @field_validator("retries")
    @classmethod
    def _check_retry_count(cls, value: int | RetryPolicy | None) -> int | RetryPolicy | None:
        if isinstance(value, int) and not 0 <= value <= 10:
            raise ValueError("retries must be between 0 and 10")
        return value

    @field_validator("gpu", mode="before")
    @classmethod
    def _normalize_gpus(cls, value: Any) -> Any:
        if isinstance(value, str):
            return normalize_gpu(value)
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty GPU fallback list; leave gpu unset for CPU only")
            return [normalize_gpu(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("cpu", "memory")
    @classmethod
    def _check_request_and_limit(cls, value: Any, info: ValidationInfo) -> Any:
        """A number, or a (request, limit) pair with 0 < request <= limit."""
        request, limit = value if isinstance(value, tuple) else (value, value)
        if request is not None and limit is not None and not 0 < request <= limit:
            raise ValueError(f"{info.field_name} must be > 0, and a (request, limit) pair needs request <= limit")
        return value

    @field_validator("volumes")
    @classmethod
    def _check_mount_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"volume mount path {path!r} must be absolute")
        return value

    @model_validator(mode="after")
    def _check_min_not_above_max(self) -> DeploymentConfig:
        if self.max_containers is not None and self.min_containers > self.max_containers:
            raise ValueError(
                f"min_containers ({self.min_containers}) is greater than max_containers ({self.max_containers})"
            )
        return self


class BatchConfig(Section):
    max_batch_size: int = Field(8, ge=1, le=1000)
    wait_ms: int = Field(10, ge=0, le=600_000)


BUILTIN_QUEUE_BACKENDS = ("memory", "redis", "modal", "taskiq", "sqs")


class QueueConfig(Section):
    """Async jobs: where results are pushed (`backend`) and how the local job store behaves."""

    # A built-in backend, or a name given to `modalkit.task_queue.register_backend` before the first job.
    backend: str = Field("memory", pattern=r"^[A-Za-z0-9_.:-]+$")
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # taskiq: redis://... (taskiq-redis) or memory://
    # "modalkit": the JSON that ModalKit's queue consumers read; "native": {job_id, status, meta, result|error}.
    message_format: Literal["native", "modalkit"] = "native"
    job_store: str = ".modalkit/jobs.sqlite3"
    max_pending: int = Field(10_000, ge=1)
    max_attempts: int = Field(3, ge=1, le=100)
    result_ttl_seconds: int = Field(86_400, ge=1)
    job_timeout_seconds: float | None = Field(None, gt=0, le=86_400)  # a running job past it fails (504)
    # Queue names a client may send: exact names, or prefixes ending in "*"; ["*"] allows any name.
    allowed_queues: list[str] = Field(default_factory=lambda: ["*"])
    delivery_workers: int = Field(4, ge=1, le=256)  # pushes to result queues in flight at once
    # The local job store's budget: past either, new jobs get 507/429 until finished ones expire or are purged.
    max_store_bytes: int = Field(1024**3, ge=1024 * 1024)
    max_store_rows: int = Field(100_000, ge=100)

    @model_validator(mode="after")
    def _taskiq_needs_broker(self) -> QueueConfig:
        if self.backend == "taskiq" and self.broker_url is None:
            raise ValueError("backend taskiq needs broker_url (redis://host:port/db, or memory://)")
        return self


class PricingConfig(Section):
    """USD per second, for the cost estimate of `/stats`; entries given here replace the built-in ones."""

    gpu_per_second: dict[str, float] = Field(default_factory=lambda: dict(pricing.GPU_PER_SECOND))
    cpu_core_per_second: float = Field(pricing.CPU_CORE_PER_SECOND, ge=0)
    memory_gib_per_second: float = Field(pricing.MEMORY_GIB_PER_SECOND, ge=0)

    @field_validator("gpu_per_second", mode="before")
    @classmethod
    def _overlay_builtin_prices(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**pricing.GPU_PER_SECOND, **{normalize_gpu(k): v for k, v in value.items()}}
        return value


class LimitsConfig(Section):
    """What one request may ask of the server."""

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)  # larger bodies get 413, refused before being read
    request_timeout_seconds: float = Field(60.0, gt=0, le=86400)  # /predict waits this long, then 504
    max_batch_items: int = Field(1000, ge=1, le=100_000)  # items in one /predict_batch body, else 413
    # Sync requests waiting for a container, per model; past it 503 with Retry-After (a bounded queue).
    max_queued_requests: int = Field(1000, ge=1, le=1_000_000)
    # Bodies larger than this are parsed in a worker thread, so one big body never stalls the event loop.
    parse_in_thread_bytes: int = Field(256 * 1024, ge=0)
    max_meta_bytes: int = Field(16 * 1024, ge=0)  # the JSON of an async request's `meta`, else 413
    # Uploads (an input model with `bytes` or `modalkit.files.File` fields): multipart or raw bodies.
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1)  # a whole multipart or raw body, else 413 unread
    max_file_bytes: int = Field(25 * 1024 * 1024, ge=1)  # one file, unless its field's Upload says otherwise
    file_content_types: list[str] = Field(default_factory=lambda: ["*/*"])  # what a file field accepts by default
    # The connection edge (`modalkit serve`): slow or silent clients and huge headers are cut off.
    max_connections: int = Field(1000, ge=1, le=100_000)  # open connections; past it new ones get 503
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)  # a request's headers must arrive within this
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # all header lines of one request, else 431
    max_headers: int = Field(100, ge=8, le=10_000)  # header lines of one request, else 431


class LocalConfig(Section):
    """How `modalkit serve` plays Modal's containers on one machine."""

    # Torch/OpenMP threads per container; default: the machine's cores shared by max containers.
    threads_per_container: int | None = Field(None, ge=1, le=256)
    # On SIGTERM: requests and running async batches get this long to finish; queued jobs stay stored.
    shutdown_grace_seconds: float = Field(30.0, ge=0, le=3600)
    # How often a ready container's `InferenceBase.health()` is asked (between batches), for `/readyz`.
    health_check_interval_seconds: float = Field(10.0, gt=0, le=3600)


CLIENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a metric label value: short, and only the names configured
DEFAULT_CLIENT = "default"  # the client of the single-key forms (api_key, api_key_env, ssm_key)


class ClientKey(Section):
    """One client's API key: from an environment variable, which a Modal secret sets on Modal; never in the YAML."""

    api_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_secret: str | None = Field(None, min_length=1)  # a Modal secret that sets api_key_env in the web function

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "api_key: a client's key is never written in the YAML; set api_key_env (the variable that holds it)"
                " and, on Modal, api_key_secret (the secret that sets it)"
            )
        return data


class AuthConfig(Section):
    """API-key auth for every route but `public_routes`; on when api_key, api_key_env, ssm_key or clients is set.

    The single-key forms are one client, named "default"; `clients` names more, each with its own key.
    """

    api_key: SecretStr | None = None  # a literal key: fine locally, use api_key_env (+ a secret) on Modal
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_secret: str | None = None  # a Modal secret that sets api_key_env in the web containers
    # An AWS SSM Parameter Store name (ModalKit's): read once when the web app starts (`pip install modalkit[aws]`).
    ssm_key: str | None = Field(None, min_length=1)
    clients: dict[str, ClientKey] = {}  # client name -> its key; each client sees only its own jobs
    header: str = Field("x-api-key", pattern=r"^[A-Za-z0-9-]+$")
    public_routes: list[str] = ["/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"]

    @property
    def open_routes(self) -> frozenset[str]:
        """What callers reach without the key: `public_routes`, and always the probes (they show no detail)."""
        return frozenset([*self.public_routes, "/livez", "/readyz"])

    @model_validator(mode="before")
    @classmethod
    def _accept_old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "auth_header" in data:
            if "header" in data:
                raise ValueError("both 'auth_header' and its new name 'header' are set; keep only 'header'")
            _warn_renamed("auth_config.auth_header", "auth_config.header")
            data = {("header" if k == "auth_header" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthConfig:
        sources = [name for name in ("api_key", "api_key_env", "ssm_key") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ValueError(f"set one of api_key, api_key_env and ssm_key, not {' and '.join(sources)}")
        if self.api_key_secret is not None and self.api_key_env is None and self.ssm_key is None:
            raise ValueError("api_key_secret needs api_key_env (the variable it sets) or ssm_key (AWS credentials)")
        bad = [name for name in self.clients if not re.fullmatch(CLIENT_NAME, name) or name == "anonymous"]
        if bad:
            raise ValueError(
                f"clients: {bad[0]!r} is not a client name: 1-64 of A-Z a-z 0-9 _ . -, starting alnum, and not"
                " 'anonymous' (the name of callers without a key)"
            )
        if sources and DEFAULT_CLIENT in self.clients:
            raise ValueError(
                f"clients.{DEFAULT_CLIENT}: the client of {sources[0]} is named {DEFAULT_CLIENT!r}; name this one"
                " otherwise, or move the single key into clients"
            )
        return self


class WebhookConfig(Section):
    """Signed webhooks of async jobs (Standard Webhooks): off until `allowed_hosts` names a host."""

    secret_env: str = Field("MODALKIT_WEBHOOK_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # holds "whsec_<base64>"
    modal_secret: str | None = None  # a Modal secret that sets secret_env, attached to the service and web function
    # Hosts a client may name in `webhook_url`: exact names, "*.example.com" (its subdomains), or "*" (any host).
    allowed_hosts: list[str] = []
    allow_private: bool = False  # let hosts resolve to loopback, private, link-local or reserved addresses
    timeout_seconds: float = Field(10.0, gt=0, le=300)  # one POST, connecting included
    max_attempts: int = Field(8, ge=1, le=100)
    first_retry_seconds: float = Field(1.0, gt=0, le=3600)  # then doubled each time, up to max_retry_seconds
    max_retry_seconds: float = Field(300.0, gt=0, le=86_400)
    retry_window_seconds: float = Field(3600.0, gt=0, le=7 * 86_400)  # no try starts later after the job ended


class AppSettings(Section):
    app_prefix: str = Field("modalkit-app", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    build_config: BuildConfig = Field(default_factory=BuildConfig)
    deployment_config: DeploymentConfig = Field(default_factory=DeploymentConfig)
    batch_config: BatchConfig = Field(default_factory=BatchConfig)
    queue_config: QueueConfig = Field(default_factory=QueueConfig)
    auth_config: AuthConfig = Field(default_factory=AuthConfig)
    webhook_config: WebhookConfig = Field(default_factory=WebhookConfig)
    local_config: LocalConfig = Field(default_factory=LocalConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_async_config(cls, data: Any) -> Any:
        # ModalKit's async_config: timeout and result_ttl of async jobs, which queue_config holds here.
        if not isinstance(data, dict) or "async_config" not in data:
            return data
        data = dict(data)
        old = data.pop("async_config") or {}
        if not isinstance(old, dict):
            raise ValueError("async_config must be a mapping (timeout, result_ttl)")
        queue = dict(data.get("queue_config") or {})
        for key, value in old.items():
            new = _ASYNC_CONFIG_KEYS.get(key)
            if new is None:
                raise ValueError(f"async_config.{key}: unknown key (known: {', '.join(_ASYNC_CONFIG_KEYS)})")
            if new in queue:
                raise ValueError(f"both async_config.{key} and queue_config.{new} are set; keep queue_config.{new}")
            _warn_renamed(f"async_config.{key}", f"queue_config.{new}")
            queue[new] = value
        data["queue_config"] = queue
        return data

    @model_validator(mode="before")
    @classmethod
    def _old_mounts(cls, data: Any) -> Any:
        # ModalKit put local mounts under deployment_config.mounts; they are image steps now.
        deploy = data.get("deployment_config") if isinstance(data, dict) else None
        if isinstance(deploy, dict) and "mounts" in deploy:
            _warn_renamed("deployment_config.mounts", "build_config.add_local")
            data = {**data, "deployment_config": {k: v for k, v in deploy.items() if k != "mounts"}}
            build = dict(data.get("build_config") or {})
            build["add_local"] = list(build.get("add_local", [])) + list(deploy["mounts"] or [])
            data["build_config"] = build
        return data


_ASYNC_CONFIG_KEYS = {"timeout": "job_timeout_seconds", "result_ttl": "result_ttl_seconds"}


class ModelSettings(Section):
    local_model_repository_folder: str = "models"

    @field_validator("local_model_repository_folder", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # ModalKit typed it Path

    common: dict[str, Any] = {}
    # Each entry is passed to the InferenceBase constructor as keyword arguments.
    model_entries: dict[str, dict[str, Any]] = {}


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(ConfigDeprecationWarning(f"app_settings.{old}", f"app_settings.{new}"), stacklevel=2)
