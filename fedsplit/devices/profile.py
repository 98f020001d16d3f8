"""Device profiles: what an emulated terminal is, in physical units."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Mapping

PROFILE_FIELDS_DOC: dict[str, str] = {
    "num_cpus": "Ray CPU budget of the actor emulating the terminal (cores)",
    "num_gpus": "Ray GPU budget (fraction of one GPU; ignored where no GPU exists)",
    "flops_per_s": "sustained training throughput (FLOP/s)",
    "cpu_hz": "CPU clock frequency (Hz)",
    "kappa": "effective switched capacitance (energy per cycle = kappa * cpu_hz**2, joules)",
    "uplink_bps": "uplink bandwidth (bit/s)",
    "downlink_bps": "downlink bandwidth (bit/s)",
    "link_latency_s": "one-way link latency (seconds)",
    "tx_power_w": "radio transmit power (watts)",
    "availability": "probability of being online in a round, in (0, 1]",
}


@dataclass(frozen=True)
class DeviceProfile:
    """A class of edge terminal.

    Parameters
    ----------
    name : str
        Profile name, e.g. ``"raspberry-pi-4"``.
    num_cpus : float
        Ray CPU budget (cores) of the actor that emulates the terminal.
    num_gpus : float
        Ray GPU budget, a fraction of one GPU; only used where a GPU exists.
    flops_per_s : float
        Sustained training throughput in FLOP/s.
    cpu_hz : float
        CPU clock frequency in Hz.
    kappa : float
        Effective switched capacitance; one cycle costs ``kappa * cpu_hz**2`` joules.
    uplink_bps, downlink_bps : float
        Link bandwidths in bit/s.
    link_latency_s : float
        One-way link latency in seconds.
    tx_power_w : float
        Radio transmit power in watts.
    availability : float
        Probability that the terminal is online in a round, in (0, 1].
    """

    name: str
    num_cpus: float
    num_gpus: float
    flops_per_s: float
    cpu_hz: float
    kappa: float
    uplink_bps: float
    downlink_bps: float
    link_latency_s: float
    tx_power_w: float
    availability: float

    def __post_init__(self) -> None:
        for key in PROFILE_FIELDS_DOC:
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"device profile '{self.name}': {key} = {value!r}: expected a finite number")
        positive = ("flops_per_s", "cpu_hz", "kappa", "uplink_bps", "downlink_bps", "num_cpus")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(
                    f"device profile '{self.name}': {key} = {getattr(self, key)!r}: must be > 0 "
                    f"({PROFILE_FIELDS_DOC[key]})"
                )
        for key in ("link_latency_s", "tx_power_w", "num_gpus"):
            if getattr(self, key) < 0:
                raise ValueError(f"device profile '{self.name}': {key} = {getattr(self, key)!r}: must be >= 0")
        if not 0 < self.availability <= 1:
            raise ValueError(
                f"device profile '{self.name}': availability = {self.availability!r}: must be in (0, 1]"
            )

    @classmethod
    def from_mapping(cls, name: str, values: Mapping[str, Any]) -> "DeviceProfile":
        """Build a profile from a mapping, naming any missing or unknown field in the error."""
        allowed = set(PROFILE_FIELDS_DOC)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(
                f"device profile '{name}': unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})"
            )
        missing = sorted(allowed - set(values))
        if missing:
            raise ValueError(f"device profile '{name}': missing field '{missing[0]}' ({PROFILE_FIELDS_DOC[missing[0]]})")
        return cls(name=name, **{k: float(values[k]) if isinstance(values[k], int) and not isinstance(values[k], bool) else values[k] for k in allowed})

    def to_dict(self) -> dict[str, Any]:
        """The profile as a plain dict (without the name)."""
        data = asdict(self)
        data.pop("name")
        return data


def builtin_profiles() -> dict[str, DeviceProfile]:
    """Load the device classes shipped with fedsplit (``profiles.toml``)."""
    text = resources.files("fedsplit.devices").joinpath("profiles.toml").read_text(encoding="utf-8")
    table = tomllib.loads(text)
    return {name: DeviceProfile.from_mapping(name, values) for name, values in table.items()}


def resolve_profiles(user_profiles: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles, extended (or overridden) by the user's.

    A user profile may name ``base = "<profile>"`` to inherit every field it does not set: a
    built-in profile or another user profile, in whatever order the table lists them (a user
    profile with a built-in's name and ``base`` = that name overrides the built-in's fields).

    Raises
    ------
    ValueError
        For a ``base`` that names no profile or leads back to the profile itself, and as
        :meth:`DeviceProfile.from_mapping`.
    """
    profiles = builtin_profiles()
    user = {name: dict(values) for name, values in (user_profiles or {}).items()}
    known = sorted(set(profiles) | set(user))

    def resolve(name: str, chain: tuple[str, ...]) -> DeviceProfile:
        values = dict(user[name])
        base_name = values.pop("base", None)
        if base_name == name and name in profiles:  # a built-in overridden: base = its own name is the built-in
            values = {**profiles[name].to_dict(), **values}
        elif base_name is not None:
            if base_name in chain + (name,):
                raise ValueError(
                    f"profiles.{name}.base = {base_name!r}: leads back to itself "
                    f"({' -> '.join(chain + (name, base_name))}); allowed: a profile that does not inherit from {name!r}"
                )
            if base_name in user and base_name not in resolved:
                resolved[base_name] = resolve(base_name, chain + (name,))
            if base_name not in resolved and base_name not in profiles:
                raise ValueError(
                    f"profiles.{name}.base = {base_name!r}: unknown device profile (known: {', '.join(known)})"
                )
            values = {**resolved.get(base_name, profiles.get(base_name)).to_dict(), **values}
        return DeviceProfile.from_mapping(name, values)

    resolved: dict[str, DeviceProfile] = {}
    for name in user:
        if name not in resolved:
            resolved[name] = resolve(name, ())
    profiles.update(resolved)
    return profiles


__all__ = ["DeviceProfile", "PROFILE_FIELDS_DOC", "builtin_profiles", "resolve_profiles"]
