"""One settings object, read from environment variables and an optional TOML file.

Settings are built once at an entry point (CLI, server) and passed down; library
code never reads the environment itself. Precedence: explicit keyword arguments,
then ``RADVAULT_*`` environment variables, then ``RADVAULT_HOME/radvault.toml``,
then defaults.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from radvault.errors import ConfigurationError

__all__ = ["HttpSettings", "ImagingLimits", "PreprocessSettings", "Settings", "load_settings"]

DEFAULT_HOME = Path.home() / ".radvault"

_FORM_SLACK = 64 * 1024  # radvault.api._upload.FORM_SLACK (a test keeps the two equal)


@dataclass(frozen=True)
class ImagingLimits:
    """Caps that protect readers from huge files and decompression bombs."""

    max_file_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 256 * 1024 * 1024  # total samples over all frames and channels

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0 or self.max_pixels <= 0:
            raise ConfigurationError("imaging limits must be positive")


@dataclass(frozen=True)
class PreprocessSettings:
    """The paper's preprocessing (section 3.2); each step can be switched off."""

    size: int = 224
    window: bool = True
    normalize: bool = True
    enhance: bool = True  # CLAHE
    denoise: bool = True  # bilateral filter
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    bilateral_diameter: int = 5
    bilateral_sigma_color: float = 0.1
    bilateral_sigma_space: float = 3.0

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 4096:
            raise ConfigurationError(f"preprocess size must be within 8..4096, got {self.size}")
        if self.clahe_clip_limit <= 0 or self.clahe_tile_grid < 1:
            raise ConfigurationError("CLAHE clip limit and tile grid must be positive")


@dataclass(frozen=True)
class HttpSettings:
    """Limits of the HTTP face (``radvault serve``): the ``[http]`` table of ``radvault.toml``.

    The API layer turns them into its own ``radvault.api.ApiSettings``.

    Parameters
    ----------
    max_upload_bytes : int
        Largest image upload, in bytes (also capped by ``limits.max_file_bytes``).
    max_upload_bytes_in_flight : int
        The most bytes the bodies of all uploads in flight may hold together.
        0: room for four uploads at the cap (4 x (cap + 64 KiB)); otherwise at
        least ``max_upload_bytes`` + 64 KiB.
    upload_idle_timeout_s : float
        The longest wait, in seconds, for the next part of an upload's body.
    upload_min_bytes_per_s : int
        The slowest average rate, in bytes per second over the body so far, an
        upload may arrive at once it has taken ``upload_idle_timeout_s``
        seconds. 0: no minimum.
    max_body_bytes : int
        Largest body of every other request, in bytes.

    Raises
    ------
    ConfigurationError
        If a limit or the idle timeout is not positive, the minimum rate or the
        uploads in flight are negative, or the uploads in flight could not hold
        one upload at ``max_upload_bytes``.
    """

    max_upload_bytes: int = 256 * 1024 * 1024
    max_upload_bytes_in_flight: int = 0
    upload_idle_timeout_s: float = 30.0
    upload_min_bytes_per_s: int = 16 * 1024
    max_body_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"http.{name} must be a positive number of bytes, "
                                         f"got {getattr(self, name)}")
        if not 0 < self.upload_idle_timeout_s < math.inf:
            raise ConfigurationError("http.upload_idle_timeout_s must be a positive number of "
                                     f"seconds, got {self.upload_idle_timeout_s}")
        if self.upload_min_bytes_per_s < 0:
            raise ConfigurationError("http.upload_min_bytes_per_s must be 0 (no minimum) or "
                                     f"positive, got {self.upload_min_bytes_per_s}")
        in_flight = self.max_upload_bytes_in_flight
        if in_flight != 0 and in_flight < self.max_upload_bytes + _FORM_SLACK:
            raise ConfigurationError(
                "http.max_upload_bytes_in_flight must be 0 (four uploads at the cap) or hold "
                f"one upload at the cap: at least http.max_upload_bytes + 64 KiB "
                f"({self.max_upload_bytes + _FORM_SLACK}), got {in_flight}")


@dataclass(frozen=True)
class Settings:
    """Everything configurable in RadVault.

    ``home`` holds the vault (keys, catalog, blobs, audit). Secrets are never
    stored here in code: they come from the environment or from files under ``home``.
    """

    home: Path = DEFAULT_HOME
    catalog_url: str = ""  # default: sqlite:///<home>/catalog.sqlite3
    accept_burned_in: bool = False
    retain_dates_shifted: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    clean_descriptors: bool = True
    keep_private_tags: bool = False
    limits: ImagingLimits = field(default_factory=ImagingLimits)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    chunk_size: int = 1024 * 1024
    audit_checkpoint_every: int = 100
    refer_threshold: float = 0.80
    # "full": every catalog commit is flushed to disk before it returns (SQLite
    # synchronous=FULL): an OS crash or power cut loses nothing committed.
    # "normal": SQLite WAL with synchronous=NORMAL: a killed process still loses
    # nothing committed, an OS crash may lose the last commits but never corrupts.
    durability: str = "full"

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.durability not in ("full", "normal"):
            raise ConfigurationError("durability must be 'full' or 'normal'")
        if not 0.0 < self.refer_threshold <= 1.0:
            raise ConfigurationError("refer_threshold must be within (0, 1]")
        if self.chunk_size < 4096:
            raise ConfigurationError("chunk_size must be at least 4096 bytes")

    @property
    def resolved_catalog_url(self) -> str:
        """The catalog URL, defaulting to SQLite inside ``home``."""
        return self.catalog_url or f"sqlite:///{self.home / 'catalog.sqlite3'}"


_BOOL = {"1": True, "true": True, "yes": True, "on": True,
         "0": False, "false": False, "no": False, "off": False}


def _coerce(name: str, value: Any, target: Any) -> Any:
    if isinstance(target, bool):
        if isinstance(value, bool):
            return value
        try:
            return _BOOL[str(value).strip().lower()]
        except KeyError:
            raise ConfigurationError(f"setting {name!r} must be a boolean, got {value!r}") from None
    if isinstance(value, bool) and isinstance(target, int | float):
        # A TOML ``true`` is an int to Python; as a size or a count it is a mistake.
        raise ConfigurationError(f"setting {name!r} must be a number, got {value!r}")
    if isinstance(target, int):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigurationError(f"setting {name!r} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"setting {name!r} must be a whole number") from None
    if isinstance(target, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"setting {name!r} must be a number") from None
    if isinstance(target, Path):
        return Path(str(value))
    return str(value)


def _apply(obj: Any, values: Mapping[str, Any], prefix: str) -> Any:
    changes: dict[str, Any] = {}
    for f in fields(obj):
        current = getattr(obj, f.name)
        key = f.name
        if hasattr(current, "__dataclass_fields__"):
            sub = values.get(key)
            if isinstance(sub, type(current)):  # a whole table given as its object
                changes[key] = sub
                continue
            if sub is not None and not isinstance(sub, Mapping):
                raise ConfigurationError(f"setting {prefix + key!r} is a table: write "
                                         f"[{prefix + key}] and its settings under it")
            sub_env = {k[len(key) + 2:]: v for k, v in values.items()
                       if isinstance(k, str) and k.startswith(key + "__")}
            merged = {**(sub if isinstance(sub, Mapping) else {}), **sub_env}
            if merged:
                changes[key] = _apply(current, merged, f"{prefix}{key}.")
        elif key in values:
            changes[key] = _coerce(prefix + key, values[key], current)
    unknown = [k for k in values if k not in {f.name for f in fields(obj)} and "__" not in k]
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(prefix + k for k in unknown)}")
    return replace(obj, **changes) if changes else obj


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from overrides, environment and the TOML file.

    Environment variables are ``RADVAULT_<NAME>`` (e.g. ``RADVAULT_HOME``,
    ``RADVAULT_ACCEPT_BURNED_IN``); nested settings use a double underscore
    (``RADVAULT_PREPROCESS__SIZE=128``, ``RADVAULT_HTTP__MAX_UPLOAD_BYTES=104857600``),
    tables in the TOML file (``[preprocess]``, ``[http]``).

    Raises
    ------
    ConfigurationError
        If a value has the wrong type or a name is unknown.
    """
    env = os.environ if env is None else env
    home = Path(overrides.get("home") or env.get("RADVAULT_HOME") or DEFAULT_HOME).expanduser()
    values: dict[str, Any] = {}
    toml_path = home / "radvault.toml"
    if toml_path.is_file():
        try:
            values.update(tomllib.loads(toml_path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{toml_path}: invalid TOML ({exc})") from None
    skip = {"RADVAULT_PASSPHRASE", "RADVAULT_NEW_PASSPHRASE", "RADVAULT_USER_PASSWORD",
            "RADVAULT_DEID_SECRET"}  # secrets, never settings
    for key, value in env.items():
        # RADVAULT_TEST_* belong to the test suite (tests/conftest.py), not to the settings.
        if key.startswith("RADVAULT_") and key not in skip and not key.startswith("RADVAULT_TEST_"):
            values[key[len("RADVAULT_"):].lower()] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["home"] = home
    return _apply(Settings(), values, "")
