"""Device profiles for Edgent: the built-in ones plus an IoT-class terminal.

Edgent targets constrained terminals (its prototype: a Raspberry Pi 3 running AlexNet in about
2 s). ``iot-camera`` is such a terminal for the small default model: a microcontroller-class smart
camera (Cortex-M7 @ 480 MHz with a single-precision FPU: ~1 GFLOP/s peak, ~2e8 FLOP/s sustained on
small CNN layers), on Wi-Fi with the Raspberry Pi 4's link (10 ms one-way). The edge server is the
built-in ``edge-server`` (1e11 FLOP/s).
"""

from __future__ import annotations

from fedsplit.devices.profile import DeviceProfile, resolve_profiles

#: Extra profiles, in ``resolve_profiles`` form (``base`` = built-in profile inherited).
EDGENT_PROFILES: dict[str, dict] = {
    "iot-camera": {"base": "raspberry-pi-4", "flops_per_s": 2.0e8, "cpu_hz": 4.8e8},
}

DEFAULT_DEVICE = "iot-camera"
DEFAULT_EDGE = "edge-server"


def edgent_profiles() -> dict[str, DeviceProfile]:
    """Built-in device profiles plus :data:`EDGENT_PROFILES`."""
    return resolve_profiles(EDGENT_PROFILES)


def get_profile(name: str) -> DeviceProfile:
    """One profile by name, or ValueError listing the known ones."""
    profiles = edgent_profiles()
    if name not in profiles:
        raise ValueError(f"device = {name!r}: unknown device profile (known: {', '.join(sorted(profiles))})")
    return profiles[name]


__all__ = ["DEFAULT_DEVICE", "DEFAULT_EDGE", "EDGENT_PROFILES", "edgent_profiles", "get_profile"]
