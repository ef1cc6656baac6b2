"""docs/configuration.md names every key of the schema."""

from __future__ import annotations

import re

from pydantic import BaseModel

from modalkit.config.settings import ModalkitSettings
from tests.conftest import ROOT


def keys(model: type[BaseModel]) -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        found.add(field.alias or name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            for inner in (arg, *getattr(arg, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= keys(inner)
    return found


def test_configuration_reference_lists_every_key() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    missing = sorted(k for k in keys(ModalkitSettings) if not re.search(rf"\b{k}\b", text))
    assert not missing, f"docs/configuration.md does not describe: {missing}"
