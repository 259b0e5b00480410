"""An exporter's config, checked before anything is stored: types, bounds, secrets by env name, paths.

Each loader declares its settings as `ConfigField`s; `check_config` refuses unknown keys, wrong types, secrets
given as values, and strings a database cannot store, with one line naming the setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ledger_core.errors import ValidationError
from ledger_core.validation import text
from ledger_pipelines.errors import InvalidExporterConfig, MissingSecret


@dataclass(frozen=True)
class ConfigField:
    name: str
    kind: type | tuple[type, ...]
    required: bool = False
    secret: bool = False  # may be {"env": "VAR"}; a secret must be
    default: Any = None
    bounds: tuple[int, int] | None = None  # inclusive range for an integer setting


PORT_BOUNDS = (1, 65535)


SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _check_strings(driver: str, value: Any, where: str) -> None:
    """Every string of a config, keys included, must be storable (no NUL) and encodable (no lone surrogate)."""
    if isinstance(value, str):
        try:
            text(value, field=where)  # the ledger's one rule for storable text
        except ValidationError as exc:
            raise InvalidExporterConfig(driver, str(exc)) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_strings(driver, key, f"a key of {where}")
            _check_strings(driver, item, f"'{key}'" if where == "the config" else where)


def check_config(driver: str, fields: Sequence[ConfigField], config: Any) -> dict[str, Any]:
    """Validate a config against its fields: required keys, types, no unknown keys, secrets by env name."""
    if not isinstance(config, Mapping):
        raise InvalidExporterConfig(driver, "config must be a JSON object")
    _check_strings(driver, config, "the config")
    known = {f.name: f for f in fields}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InvalidExporterConfig(driver, f"unknown setting(s) {unknown}; known: {sorted(known)}")
    checked: dict[str, Any] = {}
    for f in fields:
        if f.name not in config or config[f.name] is None:
            if f.required:
                raise InvalidExporterConfig(driver, f"'{f.name}' is required")
            if f.default is not None:
                checked[f.name] = f.default
            continue
        value = config[f.name]
        if isinstance(value, Mapping) and set(value) == {"env"}:
            if not f.secret:
                raise InvalidExporterConfig(driver, f"'{f.name}' cannot be read from the environment")
            if not isinstance(value["env"], str) or not ENV_NAME.fullmatch(value["env"]):
                raise InvalidExporterConfig(driver, f"'{f.name}': {{\"env\": …}} must name an environment "
                                                    f"variable (letters, digits, '_'), got {value['env']!r}")
            checked[f.name] = {"env": value["env"]}
            continue
        if f.secret:
            raise InvalidExporterConfig(
                driver, f"'{f.name}' is a secret: give {{\"env\": \"VARIABLE\"}}, never the value itself"
            )
        if (isinstance(value, bool) and f.kind is not bool) or not isinstance(value, f.kind):
            raise InvalidExporterConfig(driver, f"'{f.name}' must be {_kind_name(f.kind)}, got {value!r}")
        if f.bounds and not f.bounds[0] <= value <= f.bounds[1]:
            raise InvalidExporterConfig(driver, f"'{f.name}' must be between {f.bounds[0]} and {f.bounds[1]}, "
                                                f"got {value}")
        checked[f.name] = value
    schema = checked.get("schema")
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        raise InvalidExporterConfig(driver, f"'schema' must be a plain identifier, got {schema!r}")
    return checked


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", bool: "true or false"}.get(k, k.__name__) for k in kinds)


def local_path(driver: str, key: str, value: str, base_dir: Path, *, folder: bool = False) -> str:
    """`value` made absolute against `base_dir`, after checking files can be created where it points.

    `folder`: the path is a data folder (created now), else a file (its folder is created now).
    """
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise InvalidExporterConfig(driver, f"'{key}': {str(path)!r} is a folder; give a file path")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".ledger-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InvalidExporterConfig(driver, f"'{key}': cannot create files in {str(where)!r} "
                                            f"({exc.strerror or exc}); choose a writable folder") from None
    return str(path)


def local_file(driver: str, key: str, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`config` with the file at `key` (a key file the user names, if any) made absolute and checked to exist."""
    if key not in config:
        return config
    path = local_path(driver, key, config[key], base_dir)
    if not Path(path).is_file():
        raise InvalidExporterConfig(driver, f"'{key}': no file at {path!r}")
    return {**config, key: path}


def resolve_secret(driver: str, key: str, value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping) and "env" in value:
        found = environ.get(value["env"])
        if found is None:
            raise MissingSecret(driver, key, value["env"])
        return found
    return value


FaultHook = Callable[[str], None]  # called at named points of a sync; the tests raise there to simulate a crash


class Configured:
    """What every driver's class shares: its settings (`config_fields`), checked at creation and when opened,
    the paths in them resolved once (`prepare`), and its secrets read from the environment only when it runs."""

    driver: ClassVar[str]
    config_fields: ClassVar[tuple[ConfigField, ...]]

    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str], fault: FaultHook | None = None):
        self.config = self.validate(config)
        self.environ = environ
        self.fault: FaultHook = fault or (lambda point: None)

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        return check_config(cls.driver, cls.config_fields, config)

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        """At `exporters create`, once: resolve relative paths against `base_dir` (where the user typed them)
        and check that what the config points at can be used. The result is what is stored."""
        return config

    def secret(self, key: str) -> Any:
        return resolve_secret(self.driver, key, self.config.get(key), self.environ)
