"""Loading a :class:`~fedsplit.config.schema.RunConfig` from TOML files and ``--set`` overrides.

Every problem is reported as one :class:`ConfigError` line that names the field, the bad value
and what is allowed; nothing is run with a configuration that did not validate.
"""

from __future__ import annotations

import math
import tomllib
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomli_w

from fedsplit.config.errors import ConfigError
from fedsplit.config.names import (
    check_budget,
    check_data,
    check_faults,
    check_model_name,
    check_privacy,
    check_protocol_settings,
    check_secagg,
    check_split,
    check_strategy_name,
    check_transfer,
)
from fedsplit.config.schema import RunConfig

__all__ = ["ConfigError", "config_from_dict", "config_to_dict", "dump_config", "load_config", "parse_override", "validate"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as a TOML value, else taken as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set rounds=30")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_override(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating intermediate tables."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        return f"table of {_type_name(val_tp)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {name} = {value!r}: expected a table ({_type_name(tp)})")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(f"{name}.{k}", v, val_tp) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {name} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {name} = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {name} = {value!r}: expected a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"config: {name} = {value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            quoted = f" in quotes: {name} = '{value}'" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            raise ConfigError(f"config: {name} = {value!r}: expected a string{quoted}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {name}")  # pragma: no cover


def _check_rules(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config: {name} = {value!r}: unknown (allowed: {', '.join(map(str, choices))})")
    checks = (
        ("gt", lambda v, b: v > b, "> {}"),
        ("ge", lambda v, b: v >= b, ">= {}"),
        ("lt", lambda v, b: v < b, "< {}"),
        ("le", lambda v, b: v <= b, "<= {}"),
    )
    for rule, ok, text in checks:
        if rule in meta and not ok(value, meta[rule]):
            bounds = [text.format(meta[r]) for r, _, text in checks if r in meta]
            raise ConfigError(f"config: {name} = {value!r}: must be {' and '.join(bounds)}")


def _build(cls: type, tree: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in tree if k not in known]
    if unknown:
        raise ConfigError(
            f"config: unknown key '{prefix}{unknown[0]}' (allowed under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(known)})"
        )
    kwargs: dict[str, Any] = {}
    for key, value in tree.items():
        f = known[key]
        name = prefix + key
        tp = hints[key]
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config: {name} = {value!r}: expected a table")
            kwargs[key] = _build(tp, value, name + ".")
            continue
        value = _coerce(name, value, tp)
        _check_rules(name, value, f.metadata)
        kwargs[key] = value
    return cls(**kwargs)


def check_ray_address(address: str) -> None:
    """``engine.ray_address``: empty (start a local Ray), ``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT`` (Ray Client), the port an integer in 1..65535."""
    if address in ("", "auto"):
        return
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"config: engine.ray_address = {address!r}: expected HOST:PORT (e.g. 192.168.1.10:6379), "
            "ray://HOST:PORT, auto, or empty to start a local Ray"
        )


def validate(cfg: RunConfig) -> RunConfig:
    """Checks that a single field's rules cannot express: across fields, and against the rooms.

    Everything a run's configuration says is checked here, before any engine starts: device
    profiles and the population, the strategy name (:mod:`fedsplit.config.names`), compression,
    the model name and the data options. What needs Flower (a user strategy's class, the
    arguments in ``strategy.params``) is checked when the strategy is built.
    """
    from fedsplit.devices.profile import resolve_profiles

    try:
        profiles = resolve_profiles(cfg.profiles)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    for device, count in cfg.devices.items():
        if device not in profiles:
            raise ConfigError(
                f"config: devices.{device}: unknown device profile (known: {', '.join(sorted(profiles))}; "
                "add your own under [profiles.<name>])"
            )
        if count < 0:
            raise ConfigError(f"config: devices.{device} = {count}: must be >= 0")
    if cfg.num_terminals < 1:
        raise ConfigError(f"config: devices = {cfg.devices}: the population needs at least 1 terminal")
    if cfg.clock.server_profile not in profiles:
        raise ConfigError(
            f"config: clock.server_profile = {cfg.clock.server_profile!r}: unknown device profile "
            f"(known: {', '.join(sorted(profiles))})"
        )
    check_strategy_name(cfg.strategy.name)
    check_ray_address(cfg.engine.ray_address)
    if cfg.strategy.min_train_nodes > cfg.num_terminals:
        raise ConfigError(
            f"config: strategy.min_train_nodes = {cfg.strategy.min_train_nodes}: more than the "
            f"{cfg.num_terminals} terminals of the population"
        )
    if cfg.compression:
        from fedsplit.compression import CompressionConfig

        try:
            CompressionConfig.from_dict(cfg.compression)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config: compression: {exc}") from None
    check_model_name(cfg.model.name)
    check_data(cfg.data)
    check_split(cfg.training.mode, cfg.model.name, cfg.split.cut)
    check_transfer(cfg)
    check_privacy(cfg)
    check_secagg(cfg)
    check_faults(cfg)
    check_budget(cfg)
    check_protocol_settings(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run configuration.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; omitted keys keep their defaults.
    overrides : sequence of str
        ``KEY=VALUE`` strings applied after the file (``--set strategy.name=fedprox``).

    Raises
    ------
    ConfigError
        With one line naming the field, the value and what is allowed.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config: {str(path)!r} is a directory, not a TOML file")
        if not path.is_file():
            raise ConfigError(f"config: file {str(path)!r} not found")
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path}: not valid TOML ({exc})") from None
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(_build(RunConfig, tree, ""))


def config_from_dict(tree: Mapping[str, Any]) -> RunConfig:
    """Build and validate a configuration from nested dicts (the inverse of :func:`config_to_dict`)."""
    return validate(_build(RunConfig, tree, ""))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as nested plain dicts (TOML-serialisable)."""
    return asdict(cfg)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration as TOML."""
    Path(path).write_text(tomli_w.dumps(config_to_dict(cfg)), encoding="utf-8")
