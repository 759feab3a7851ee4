"""docs/configuration.md lists every setting, under its right environment variable."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

from radvault.config import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<key>[a-z_.]+)` \| `(?P<env>RADVAULT_[A-Z_]+)`")


def _setting_names(obj: object, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if is_dataclass(value):
            names |= _setting_names(value, f"{prefix}{f.name}.")
        else:
            names.add(prefix + f.name)
    return names


def _documented() -> dict[str, str]:
    rows = (ROW.match(line) for line in DOC.read_text(encoding="utf-8").splitlines())
    return {m["key"]: m["env"] for m in rows if m}


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    documented = set(_documented())
    actual = _setting_names(Settings())
    assert actual - documented == set(), "settings missing from docs/configuration.md"
    assert documented - actual == set(), "docs/configuration.md names settings that do not exist"


def test_each_documented_environment_variable_is_the_one_load_settings_reads() -> None:
    for key, env in _documented().items():
        assert env == "RADVAULT_" + key.upper().replace(".", "__"), key
