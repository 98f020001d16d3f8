"""The error types of the configuration room."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be run; the message is one line naming the field.

    The line reads ``config: FIELD = VALUE: what is wrong (allowed: ...)``; the ``fedsplit``
    command prints it after ``fedsplit <command>: error:`` (:mod:`fedsplit.cli_errors`) and exits with status 2.
    """


class RayUnreachableError(ConnectionError):
    """``engine.ray_address`` names a Ray cluster that does not answer (checked before a run
    starts, :func:`fedsplit.simulation.engine.check_ray_reachable`); the ``fedsplit`` command
    prints the message after ``fedsplit <command>: error:`` (:mod:`fedsplit.cli_errors`) and exits with status 2."""


class ClusterTooSmallError(ValueError):
    """A device class's Ray budget (``num_cpus``) exceeds the CPUs of the Ray cluster
    (:func:`fedsplit.simulation.engine.check_local_budgets`, ``plan_pools``); the message names
    the class and what to change; the ``fedsplit`` command prints it after ``fedsplit <command>: error:
    engine:`` and exits with status 2."""


class ActorStartError(RuntimeError):
    """A Ray actor of fedsplit's engine could not start the run's ClientApp: its creation raised,
    or a warm actor could not load the new app (typically the app's module cannot be imported
    in Ray's worker processes). Every actor would fail alike, so the run stops at once instead of
    replacing actors message after message; the message names the cause. The ``fedsplit`` command prints it
    after ``fedsplit <command>: error: engine:`` and exits with status 3."""
