"""Settings come from overrides, environment and TOML, and refuse bad values."""

from pathlib import Path

import pytest

from radvault.config import HttpSettings, PreprocessSettings, Settings, load_settings
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
        ({"RADVAULT_CHUNK_SIZE": "many"}, "whole number"),
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


def test_http_limits_come_from_the_http_table_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "radvault.toml").write_text(
        "[http]\nmax_upload_bytes = 10_000_000\nmax_upload_bytes_in_flight = 50_000_000\n"
        "upload_idle_timeout_s = 12.5\nmax_body_bytes = 32768\n")
    env = {"RADVAULT_HOME": str(tmp_path), "RADVAULT_HTTP__UPLOAD_MIN_BYTES_PER_S": "0",
           "RADVAULT_HTTP__UPLOAD_IDLE_TIMEOUT_S": "20"}
    http = load_settings(env=env).http
    assert http == HttpSettings(max_upload_bytes=10_000_000,
                                max_upload_bytes_in_flight=50_000_000,
                                upload_idle_timeout_s=20.0, upload_min_bytes_per_s=0,
                                max_body_bytes=32768)
    defaults = load_settings(env={}, home=tmp_path / "elsewhere").http
    assert defaults == HttpSettings()
    assert defaults.max_upload_bytes_in_flight == 0  # four uploads at the cap
    assert defaults.upload_min_bytes_per_s == 16 * 1024


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("max_upload_bytes = 0", "http.max_upload_bytes must be a positive number of bytes"),
        ("max_body_bytes = -1", "http.max_body_bytes must be a positive"),
        ("upload_idle_timeout_s = 0", "http.upload_idle_timeout_s must be a positive"),
        ("upload_idle_timeout_s = inf", "http.upload_idle_timeout_s"),
        ("upload_idle_timeout_s = nan", "http.upload_idle_timeout_s"),
        ("upload_min_bytes_per_s = -5", "http.upload_min_bytes_per_s must be 0"),
        ("max_upload_bytes = 1000\nmax_upload_bytes_in_flight = 1000",
         r"http.max_upload_bytes_in_flight must be 0 .* at least http.max_upload_bytes "
         r"\+ 64 KiB \(66536\)"),
        ("max_upload_bytes_in_flight = -1", "http.max_upload_bytes_in_flight"),
        ("max_upload_bytes = \"big\"", "'http.max_upload_bytes' must be a whole number"),
        ("max_upload_size = 1", "unknown setting.*http.max_upload_size"),
    ],
)
def test_bad_http_limits_are_refused_naming_the_setting(tmp_path: Path, table: str,
                                                        message: str) -> None:
    (tmp_path / "radvault.toml").write_text(f"[http]\n{table}\n")
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_settings(env={}, home=tmp_path)
    assert "\n" not in str(caught.value)


def test_a_bad_http_limit_in_the_environment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"http\.upload_min_bytes_per_s"):
        load_settings(env={"RADVAULT_HTTP__UPLOAD_MIN_BYTES_PER_S": "fast"}, home=tmp_path)


def test_the_form_slack_of_the_in_flight_check_is_the_api_s() -> None:
    from radvault.api._upload import FORM_SLACK

    HttpSettings(max_upload_bytes=1000, max_upload_bytes_in_flight=1000 + FORM_SLACK)
    with pytest.raises(ConfigurationError):
        HttpSettings(max_upload_bytes=1000, max_upload_bytes_in_flight=999 + FORM_SLACK)


@pytest.mark.parametrize(("toml", "message"), [
    ("chunk_size = true", "'chunk_size' must be a number, got True"),
    ("refer_threshold = false", "'refer_threshold' must be a number, got False"),
    ("[http]\nmax_body_bytes = 1.5", "'http.max_body_bytes' must be a whole number, got 1.5"),
    ("preprocess = 128", "'preprocess' is a table: write [preprocess]"),
])
def test_toml_values_of_the_wrong_kind_are_refused_not_rounded(tmp_path: Path, toml: str,
                                                              message: str) -> None:
    (tmp_path / "radvault.toml").write_text(toml + "\n")
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(env={}, home=tmp_path)


def test_a_whole_number_written_as_a_float_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "radvault.toml").write_text("[http]\nmax_body_bytes = 131072.0\n")
    assert load_settings(env={}, home=tmp_path).http.max_body_bytes == 131072


def test_a_table_passed_as_its_object_replaces_the_table(tmp_path: Path) -> None:
    (tmp_path / "radvault.toml").write_text("[preprocess]\nsize = 64\n")
    wanted = PreprocessSettings(size=32, denoise=False)
    assert load_settings(env={}, home=tmp_path, preprocess=wanted).preprocess == wanted


def test_the_test_suite_s_variables_are_not_settings(tmp_path: Path) -> None:
    env = {"RADVAULT_TEST_STRICT_SKIPS": "1", "RADVAULT_TEST_PG_URL": "postgresql://x"}
    assert load_settings(env=env, home=tmp_path) == load_settings(env={}, home=tmp_path)
