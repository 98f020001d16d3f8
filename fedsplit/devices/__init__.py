"""Device profiles, populations of emulated terminals, and the simulated clock/energy model."""

from fedsplit.devices.clock import (
    EDGE_SERVER_PROFILE,
    ClientCost,
    RoundClock,
    Slot,
    aggregation_flops,
    compute_cost,
    exchange_cost,
)
from fedsplit.devices.population import Population
from fedsplit.devices.profile import PROFILE_FIELDS_DOC, DeviceProfile, builtin_profiles, resolve_profiles

__all__ = [
    "ClientCost",
    "DeviceProfile",
    "EDGE_SERVER_PROFILE",
    "PROFILE_FIELDS_DOC",
    "Population",
    "RoundClock",
    "Slot",
    "aggregation_flops",
    "builtin_profiles",
    "compute_cost",
    "exchange_cost",
    "resolve_profiles",
]
