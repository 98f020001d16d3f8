"""A scheduling scenario whose terminals are device classes of fedsplit's profiles.

The geometry and channel are the paper's case study (:func:`generate_paper_scenario`: positions
in the cell, path loss, Rayleigh fading); each terminal's CPU frequency ``cpu_hz``, switched
capacitance ``kappa`` and transmit power ``tx_power_w`` are its device profile's, so a Raspberry
Pi and a laptop differ in preprocessing time and energy as they do in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedsplit.devices import DeviceProfile
from fedsplit.inference.paper_scenario import (
    PaperScenarioConfig,
    generate_paper_scenario,
)
from fedsplit.inference.system_model import ModelSpec, Problem


def device_scenario(
    devices: Mapping[str, int],
    profiles: Mapping[str, DeviceProfile],
    models: Sequence[ModelSpec],
    *,
    seed: int = 0,
    config: PaperScenarioConfig | None = None,
) -> tuple[Problem, list[str]]:
    """Draw a scenario with ``devices[name]`` terminals of each device class.

    Parameters
    ----------
    devices : mapping
        Device profile name -> number of terminals (terminals are listed in this order).
    profiles : mapping
        Known profiles (:func:`fedsplit.devices.resolve_profiles`).
    models : sequence of ModelSpec
        Candidate models (e.g. from a catalog).
    seed : int
        Seed of positions and fading.
    config : PaperScenarioConfig, optional
        Cell, band, edge server, deadline, energy budget, accuracy target (paper defaults).

    Returns
    -------
    (Problem, list of str)
        The scenario and the device class of every terminal.
    """
    labels = [name for name, count in devices.items() for _ in range(int(count))]
    if not labels:
        raise ValueError("device_scenario: no terminals")
    unknown = [name for name in devices if name not in profiles]
    if unknown:
        raise ValueError(f"device_scenario: unknown device profile {unknown[0]!r} (known: {', '.join(sorted(profiles))})")
    problem = generate_paper_scenario(len(labels), seed, config, list(models))
    return problem.with_updates(
        cpu_hz=[profiles[d].cpu_hz for d in labels],
        kappa=[profiles[d].kappa for d in labels],
        tx_power_w=[profiles[d].tx_power_w for d in labels],
    ), labels


__all__ = ["device_scenario"]
