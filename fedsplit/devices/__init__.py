"""Device profiles, populations of emulated terminals, and the simulated clock/energy model."""

from fedsplit.devices.cost import ClientCost, exchange_cost
from fedsplit.devices.population import Population
from fedsplit.devices.profile import PROFILE_FIELDS_DOC, DeviceProfile, builtin_profiles, resolve_profiles

__all__ = ["ClientCost", "DeviceProfile", "PROFILE_FIELDS_DOC", "Population", "builtin_profiles", "exchange_cost", "resolve_profiles"]
