"""Property tests of config parsing: a value is accepted exactly when it is in range, else the error names it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modalkit.config import ModalConfig
from modalkit.exceptions import ConfigError

RANGES = {
    ("batch_config", "max_batch_size"): (1, 1000),
    ("batch_config", "wait_ms"): (0, 600_000),
    ("deployment_config", "scaledown_window"): (2, 3600),
    ("deployment_config", "timeout"): (1, 86400),
    ("deployment_config", "max_concurrent_inputs"): (1, 1000),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(RANGES)), value=st.integers(-10, 700_000))
def test_numbers_are_accepted_exactly_in_range(tmp_path: Path, key: tuple[str, str], value: int) -> None:
    section, name = key
    low, high = RANGES[key]
    config_file = tmp_path / "modalkit.yaml"
    config_file.write_text(f"app_settings:\n  {section}:\n    {name}: {value}\n")
    if low <= value <= high:
        settings_section = getattr(ModalConfig(config_file).app_settings, section)
        assert getattr(settings_section, name) == value
    else:
        with pytest.raises(ConfigError) as info:
            ModalConfig(config_file)
        assert f"{config_file}: app_settings.{section}.{name}:" in str(info.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=0, max_size=200))
def test_any_yaml_text_gives_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    config_file = tmp_path / "modalkit.yaml"
    config_file.write_text(text)
    try:
        ModalConfig(config_file)
    except ConfigError as exc:
        assert str(config_file) in str(exc)
