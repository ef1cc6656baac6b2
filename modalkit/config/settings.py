"""`ModalConfig`: the resolved configuration of one app, read when it is built, never at import time."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from modalkit.config import translate
from modalkit.config.schema import AppSettings, ModelSettings
from modalkit.config.sources import Origins, load_yaml_files, origin_of
from modalkit.exceptions import ConfigDeprecationWarning, ConfigError

ENV_PREFIX = "MODALKIT_"
CONFIG_ENV = "MODALKIT_CONFIG"
# Inside a Modal container the resolved config travels in the image's environment (see translate.get_image).
RESOLVED_CONFIG_ENV = "MODALKIT_CONFIG_JSON"
DEFAULT_CONFIG_FILE = "modalkit.yaml"


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


class ModalConfig:
    """The configuration of one modalkit app.

    Files come from `files`, else `MODALKIT_CONFIG` (comma-separated overlays, later wins), else
    `modalkit.yaml` in the working directory; `MODALKIT_<SECTION>__<KEY>` variables override them.

        config = ModalConfig()                      # modalkit.yaml
        config = ModalConfig(["base.yaml", "prod.yaml"])
    """

    def __init__(self, files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None) -> None:
        resolved = os.environ.get(RESOLVED_CONFIG_ENV)
        if files is None and resolved:
            self.files: list[Path] = []
            data, origins = json.loads(resolved), Origins()
        else:
            self.files = _config_paths(files)
            data, origins = load_yaml_files(self.files)
        self.settings = _validate(data, origins)

    @property
    def app_settings(self) -> AppSettings:
        return self.settings.app_settings

    @property
    def model_settings(self) -> ModelSettings:
        return self.settings.model_settings

    @property
    def app_name(self) -> str:
        return self.app_settings.app_prefix

    def model_names(self) -> list[str]:
        return list(self.model_settings.model_entries)

    def model_entry(self, model_name: str) -> dict[str, Any]:
        return self.model_settings.model_entries[model_name]

    def to_dict(self) -> dict[str, Any]:
        return self.settings.model_dump(mode="json", by_alias=True)

    def get_image(self) -> Any:
        return translate.image(self.settings)

    def get_app_cls_settings(self) -> dict[str, Any]:
        return translate.app_cls_settings(self.settings)

    def get_handler_settings(self) -> dict[str, Any]:
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


def _config_paths(files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    if files is None:
        files = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE
    if isinstance(files, (str, os.PathLike)):
        files = [part.strip() for part in str(files).split(",") if part.strip()]
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(
            [f"{m}: config file not found (working directory {Path.cwd()}; set {CONFIG_ENV})" for m in missing]
        )
    return paths


def _validate(data: dict[str, Any], origins: Origins) -> ModalkitSettings:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            settings = ModalkitSettings(**data)
        except ValidationError as exc:
            raise ConfigError([_describe(err, origins) for err in exc.errors()]) from None
    for warning in caught:  # re-emit old-name warnings once, naming the file that used the old name
        message = warning.message
        if isinstance(message, ConfigDeprecationWarning):
            where = origin_of(tuple(message.old.split(".")), origins, ENV_PREFIX)
            message = ConfigDeprecationWarning(message.old, message.new, where)
        warnings.warn(message, stacklevel=3)
    return settings


def _describe(err: Any, origins: Origins) -> str:
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
