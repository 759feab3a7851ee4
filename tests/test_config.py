"""Settings come from overrides, environment and TOML, and refuse bad values."""

from pathlib import Path

import pytest

from radvault.config import PreprocessSettings, Settings, load_settings
from radvault.errors import ConfigurationError


def test_defaults_put_the_catalog_inside_home(tmp_path: Path) -> None:
    settings = load_settings(env={}, home=tmp_path)
    assert settings.home == tmp_path
    assert settings.resolved_catalog_url == f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    assert settings.preprocess.size == 224


def test_environment_overrides_toml_and_nested_values_use_double_underscore(
    tmp_path: Path,
) -> None:
    (tmp_path / "radvault.toml").write_text(
        "accept_burned_in = true\nrefer_threshold = 0.5\n[preprocess]\nsize = 64\nenhance = false\n"
    )
    env = {"RADVAULT_HOME": str(tmp_path), "RADVAULT_REFER_THRESHOLD": "0.7",
           "RADVAULT_PREPROCESS__SIZE": "96"}
    settings = load_settings(env=env)
    assert settings.accept_burned_in is True
    assert settings.refer_threshold == pytest.approx(0.7)
    assert settings.preprocess.size == 96
    assert settings.preprocess.enhance is False


def test_secrets_in_the_environment_never_become_settings(tmp_path: Path) -> None:
    env = {"RADVAULT_PASSPHRASE": "x" * 40, "RADVAULT_DEID_SECRET": "y" * 40}
    settings = load_settings(env=env, home=tmp_path)
    assert "x" * 40 not in repr(settings)
    assert "y" * 40 not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RADVAULT_ACCEPT_BURNED_IN": "perhaps"}, "boolean"),
        ({"RADVAULT_CHUNK_SIZE": "many"}, "integer"),
        ({"RADVAULT_NO_SUCH_THING": "1"}, "unknown setting"),
        ({"RADVAULT_REFER_THRESHOLD": "2"}, "refer_threshold"),
        ({"RADVAULT_PREPROCESS__SIZE": "2"}, "size"),
    ],
)
def test_bad_values_raise_configuration_error(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(env=env, home=tmp_path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "radvault.toml").write_text("this is = = not toml")
    with pytest.raises(ConfigurationError, match=r"radvault\.toml"):
        load_settings(env={}, home=tmp_path)


def test_settings_validate_when_built() -> None:
    with pytest.raises(ConfigurationError):
        PreprocessSettings(clahe_clip_limit=0)
    with pytest.raises(ConfigurationError):
        Settings(chunk_size=10)
