"""`ModalConfig`: the resolved configuration of one app, read when it is built, never at import time."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from modalkit.config import translate
from modalkit.config.decorators import decorated_at

# The names stay importable from here, where they lived before names.py.
from modalkit.config.names import APP_POSTFIX_ENV as APP_POSTFIX_ENV
from modalkit.config.names import CONFIG_ENV as CONFIG_ENV
from modalkit.config.names import DEFAULT_CONFIG_FILE as DEFAULT_CONFIG_FILE
from modalkit.config.names import ENV_PREFIX as ENV_PREFIX
from modalkit.config.names import RESOLVED_CONFIG_ENV as RESOLVED_CONFIG_ENV
from modalkit.config.schema import AppSettings, ModelSettings
from modalkit.config.sources import Origins, dotenv_value, line_of, load_yaml_files, origin_of
from modalkit.exceptions import ConfigDeprecationWarning, ConfigError, ConfigWarning


class ModalkitSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", protected_namespaces=()
    )

    app_settings: AppSettings = Field(default_factory=AppSettings)
    model_settings: ModelSettings = Field(default_factory=ModelSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # YAML arrives as init values; MODALKIT_* environment variables override it.
        return env_settings, init_settings


class Settings(ModalkitSettings):
    """ModalKit's name for the settings. `Settings.model_config["yaml_file"] = "x.yaml"` chooses the file
    that `ModalConfig()` reads when neither `files` nor `MODALKIT_CONFIG` says; `Settings()` reads it."""

    model_config = SettingsConfigDict(yaml_file=DEFAULT_CONFIG_FILE)

    def __init__(self, **values: Any) -> None:
        if not values:  # read the files, as ModalKit's Settings() did
            values = ModalConfig().settings.model_dump(by_alias=True)
        super().__init__(**values)

    @classmethod
    def _settings_warn_unused_config_keys(cls, sources: Any, model_config: Any) -> None:
        """`yaml_file` is read by `ModalConfig`, not by a pydantic-settings source: nothing to warn about."""


ConfigFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class ModalConfig:
    """The configuration of one modalkit app.

    Files come from `files`, else `MODALKIT_CONFIG` (comma-separated overlays, later wins), else
    `Settings.model_config["yaml_file"]` (default `modalkit.yaml`) in the working directory; `MODALKIT_*`
    lines of `.env` overlay them, and `MODALKIT_<SECTION>__<KEY>` variables override all of them.
    ModalKit's `ModalConfig(Settings())` (already validated settings) works too.

        config = ModalConfig()                      # modalkit.yaml
        config = ModalConfig(["base.yaml", "prod.yaml"])
    """

    default_app_postfix = ""

    def __init__(self, files: ConfigFiles | ModalkitSettings | None = None) -> None:
        resolved = os.environ.get(RESOLVED_CONFIG_ENV)
        self.files: list[Path] = []
        if isinstance(files, ModalkitSettings):
            self.settings = files
            return
        if files is None and resolved:
            data, origins = json.loads(resolved), Origins()
        else:
            self.files = _config_paths(files)
            data, origins = load_yaml_files(self.files, ENV_PREFIX)
        self.settings = _validated_settings(data, origins)

    @property
    def app_settings(self) -> AppSettings:
        return self.settings.app_settings

    @property
    def model_settings(self) -> ModelSettings:
        return self.settings.model_settings

    @property
    def app_name(self) -> str:
        """`app_prefix` plus `$MODALKIT_APP_POSTFIX` (from the environment or `.env`)."""
        return self.app_settings.app_prefix + self.app_postfix

    @property
    def app_postfix(self) -> str:
        postfix = dotenv_value(APP_POSTFIX_ENV)
        return self.default_app_postfix if postfix is None else postfix

    def model_names(self) -> list[str]:
        return list(self.model_settings.model_entries)

    def model_entry(self, model_name: str) -> dict[str, Any]:
        return self.model_settings.model_entries[model_name]

    def to_dict(self) -> dict[str, Any]:
        return self.settings.model_dump(mode="json", by_alias=True)

    def get_image(self) -> Any:
        return translate.build_image(self.settings)

    def get_app_cls_settings(self) -> dict[str, Any]:
        return translate.app_cls_settings(self.settings)

    def get_handler_settings(self) -> dict[str, Any]:
        """`@app.function` arguments of the web function. When the YAML sets its concurrency, the function
        must also carry `@modal.concurrent` (Modal 1.6 takes it no other way): without it, this fails."""
        caller = sys._getframe(1)
        _require_concurrent_decorator(self.settings, caller.f_code.co_filename, caller.f_lineno)
        return translate.handler_settings(self.settings)

    def get_asgi_app_settings(self) -> dict[str, Any]:
        return translate.asgi_app_settings(self.settings)

    def get_batched_settings(self) -> dict[str, Any]:
        return translate.batched_settings(self.settings)

    def get_concurrent_settings(self, handler: bool = False) -> dict[str, Any]:
        return translate.concurrent_settings(self.settings, handler=handler)

    def get_enter_settings(self) -> dict[str, Any]:
        return translate.enter_settings(self.settings)

    def __repr__(self) -> str:
        return f"ModalConfig(files={[str(f) for f in self.files]!r}, app_name={self.app_name!r})"


def _require_concurrent_decorator(settings: ModalkitSettings, filename: str, lineno: int) -> None:
    deploy = settings.app_settings.deployment_config
    inputs = deploy.max_concurrent_inputs_handler
    if "max_concurrent_inputs_handler" not in deploy.model_fields_set or inputs <= 1:
        return
    target = decorated_at(filename, lineno)
    if target is None or "concurrent" in target.decorators:
        return
    problem = (
        f"{filename}:{lineno}: {target.name}: app_settings.deployment_config.max_concurrent_inputs_handler "
        f"(ModalKit's allow_concurrent_inputs_handler) is {inputs}, which Modal 1.6 takes only as a decorator: "
        f"add `@modal.concurrent(max_inputs={inputs})` on the line below this one"
    )
    raise ConfigError([problem])


def _config_paths(files: ConfigFiles | None) -> list[Path]:
    if files is None:
        chosen = Settings.model_config.get("yaml_file")  # ModalKit's way to name the file
        files = dotenv_value(CONFIG_ENV) or (chosen if isinstance(chosen, str | list) and chosen else None)
        files = files or DEFAULT_CONFIG_FILE
    if isinstance(files, (str, os.PathLike)):
        files = [part.strip() for part in str(files).split(",") if part.strip()]
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(
            [f"{m}: config file not found (working directory {Path.cwd()}; set {CONFIG_ENV})" for m in missing]
        )
    return paths


def _validated_settings(data: dict[str, Any], origins: Origins) -> ModalkitSettings:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            settings = ModalkitSettings(**data)
        except ValidationError as exc:
            raise ConfigError([_describe_error(err, origins) for err in exc.errors()]) from None
    for warning in caught:  # re-emit each warning once, at the YAML file and line of the key it is about
        message = warning.message
        if isinstance(message, ConfigDeprecationWarning | ConfigWarning):
            loc = tuple(message.key.split("."))
            where = origin_of(loc, origins, ENV_PREFIX)
            message = message.at(where)
            warnings.warn_explicit(message, type(message), where.split(", ")[-1], line_of(loc, origins))
        else:
            warnings.warn(message, stacklevel=3)
    return settings


def _describe_error(err: Any, origins: Origins) -> str:
    # pydantic appends a union member's type ("int", "tuple[int, int]") to the path; drop it for the user.
    loc = tuple(str(part) for part in err["loc"] if str(part) not in _TYPE_TAGS and "[" not in str(part))
    where = origin_of(loc, origins, ENV_PREFIX)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in err and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return f"{where}: {'.'.join(loc) or '<root>'}: {message}"


_TYPE_TAGS = {"str", "int", "float", "bool", "none"}
