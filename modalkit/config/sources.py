"""Reading YAML files in order (later files overlay earlier ones) while remembering where each value came from."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modalkit.config.names import ENV_PREFIX
from modalkit.exceptions import ConfigError

Path_ = tuple[str, ...]
DOTENV_FILE = ".env"
_SECTIONS = ("app_settings", "model_settings")


@dataclass
class Origins:
    """For each YAML path: the files that set it (the last one wins for a value, a section lists them all)
    and the line of its key in the last of them."""

    files: dict[Path_, list[str]] = field(default_factory=dict)
    lines: dict[Path_, int] = field(default_factory=dict)

    def add(self, path: Path_, source: str, line: int, section: bool) -> None:
        if section:
            sources = self.files.setdefault(path, [])
            if source not in sources:
                sources.append(source)
        else:
            self.files[path] = [source]
        self.lines[path] = line


def load_yaml_files(paths: list[Path], env_prefix: str = ENV_PREFIX) -> tuple[dict[str, Any], Origins]:
    """The files merged in order, then the `.env` file of the working directory (its `<PREFIX>SECTION__KEY`
    lines, as ModalKit read them); environment variables come on top of both, in `ModalkitSettings`."""
    merged: dict[str, Any] = {}
    origins = Origins()
    for path in paths:
        data, lines = _read_yaml(path)
        if data is not None:
            _merge_with_origins(merged, data, (), str(path), origins, lines)
    dotenv = dotenv_settings(Path(DOTENV_FILE), env_prefix)
    if dotenv:
        _merge_with_origins(merged, dotenv, (), DOTENV_FILE, origins, {})
    return merged, origins


def dotenv_value(name: str) -> str | None:
    """A variable from the environment, else from the working directory's `.env` file."""
    if name in os.environ:
        return os.environ[name]
    path = Path(DOTENV_FILE)
    if not path.is_file():
        return None
    from dotenv import dotenv_values

    return dotenv_values(path).get(name)


def dotenv_settings(path: Path, env_prefix: str) -> dict[str, Any]:
    """`MODALKIT_APP_SETTINGS__BATCH_CONFIG__WAIT_MS=5` lines as nested settings; other lines are ignored."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    nested: dict[str, Any] = {}
    for name, value in dotenv_values(path).items():
        keys = name.lower().removeprefix(env_prefix.lower()).split("__")
        if not name.upper().startswith(env_prefix) or keys[0] not in _SECTIONS or value is None:
            continue
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _json_or_text(value)
    return nested


def _json_or_text(value: str) -> Any:
    if value[:1] in "[{":  # lists and mappings are JSON, as in environment variables
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _read_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, not {type(data).__name__}"])
    lines: dict[Path_, int] = {}
    _key_lines(node, (), lines)
    return data, lines


def _key_lines(node: Any, prefix: Path_, lines: dict[Path_, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key, value in node.value:
        path = (*prefix, str(key.value))
        lines[path] = key.start_mark.line + 1
        _key_lines(value, path, lines)


def _merge_with_origins(
    into: dict[str, Any], data: Mapping[str, Any], prefix: Path_, source: str, origins: Origins, lines: dict[Path_, int]
) -> None:
    for raw_key, value in data.items():
        key = str(raw_key)  # YAML allows `1:` or `null:` keys; they become unknown-key errors, not a crash
        path = (*prefix, key)
        section = isinstance(value, Mapping)
        origins.add(path, source, lines.get(path, 0), section)
        if section and isinstance(into.get(key), dict):
            _merge_with_origins(into[key], value, path, source, origins, lines)
        else:
            into[key] = _plain_dicts(value)
            if section:
                _record_origins(value, path, source, origins, lines)


def _record_origins(
    data: Mapping[str, Any], prefix: Path_, source: str, origins: Origins, lines: dict[Path_, int]
) -> None:
    for raw_key, value in data.items():
        path = (*prefix, str(raw_key))
        origins.add(path, source, lines.get(path, 0), isinstance(value, Mapping))
        if isinstance(value, Mapping):
            _record_origins(value, path, source, origins, lines)


def _plain_dicts(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_dicts(v) for k, v in value.items()}
    return value


def origin_of(loc: tuple[str, ...], origins: Origins, env_prefix: str) -> str:
    """The file(s) (or environment variable) that supplied the value at `loc`, for error messages."""
    for end in range(len(loc), 0, -1):
        env_name = env_prefix + "__".join(loc[:end]).upper()
        if env_name in os.environ:
            return f"environment variable {env_name}"
        if loc[:end] in origins.files:
            return ", ".join(origins.files[loc[:end]])
    return "defaults"


def line_of(loc: tuple[str, ...], origins: Origins) -> int:
    """The line of the key at `loc` in the file that set it last; 0 when unknown."""
    return origins.lines.get(loc, 0)
