"""Reading YAML files in order (later files overlay earlier ones) while remembering where each value came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modalkit.exceptions import ConfigError

Origins = dict[tuple[str, ...], str]


def load_yaml_files(paths: list[Path]) -> tuple[dict[str, Any], Origins]:
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: the top level must be a mapping, not {type(data).__name__}"])
        _merge(merged, data, (), str(path), origins)
    return merged, origins


def _merge(
    into: dict[str, Any], data: Mapping[str, Any], prefix: tuple[str, ...], source: str, origins: Origins
) -> None:
    for raw_key, value in data.items():
        key = str(raw_key)  # YAML allows `1:` or `null:` keys; they become unknown-key errors, not a crash
        path = (*prefix, key)
        origins[path] = source
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, path, source, origins)
        else:
            into[key] = _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def origin_of(loc: tuple[str, ...], origins: Origins, env_prefix: str) -> str:
    """The file (or environment variable) that supplied the value at `loc`, for error messages."""
    for end in range(len(loc), 0, -1):
        env_name = env_prefix + "__".join(loc[:end]).upper()
        if env_name in os.environ:
            return f"environment variable {env_name}"
        if loc[:end] in origins:
            return origins[loc[:end]]
    return "defaults"
