"""An OP's Settings dataclass, built from YAML: names and types checked, errors name the key."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tessera.server.engine import ConfigError
from tessera.server.engine.settings import NoSettings, parse_settings


@dataclass
class Settings:
    path: str                              # required
    half: bool = False
    scale: float = 1.0
    steps: int | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scale: must be positive, got {self.scale}")


def test_a_good_mapping_builds_the_dataclass():
    s = parse_settings(Settings, {"path": "/m", "half": True, "scale": 2, "steps": None, "tags": ["a"]})
    assert s == Settings("/m", True, 2, None, ["a"])
    assert parse_settings(Settings, s) is s  # already built: passed through


@pytest.mark.parametrize("raw, key, words", [
    ({"path": "/m", "halff": True}, "halff", "unknown key; expected one of ['half', 'path', 'scale', 'steps', 'tags']"),
    ({"half": True}, "path", "is required"),
    ({"path": "/m", "half": "yes"}, "half", "must be true or false, got 'yes'"),
    ({"path": "/m", "steps": 1.5}, "steps", "must be an integer or null"),
    ({"path": "/m", "steps": True}, "steps", "must be an integer or null"),
    ({"path": "/m", "tags": ["a", 1]}, "tags", "must be a list of strings"),
    ({"path": "/m", "scale": "big"}, "scale", "must be a number"),
    ({"path": "/m", "scale": -1}, "scale", "must be positive"),
])
def test_each_mistake_is_a_config_error_naming_the_setting(raw, key, words):
    with pytest.raises(ConfigError) as info:
        parse_settings(Settings, raw)
    assert info.value.key == key and words in str(info.value)


def test_an_op_without_settings_takes_none():
    assert parse_settings(NoSettings, {}) == NoSettings()
    with pytest.raises(ConfigError, match="x: unknown key; this OP takes no settings"):
        parse_settings(NoSettings, {"x": 1})
