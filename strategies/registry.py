"""Build a Flower strategy by name, or a user's own by import path.

Flower's own strategies are used as they are; fedsplit only maps names to classes and passes the
configured keyword arguments. ``package.module:Class`` loads any subclass of
:class:`flwr.serverapp.strategy.Strategy`.

The names are :data:`fedsplit.config.schema.STRATEGY_NAMES`: the configuration owns the one list
(it checks ``strategy.name`` before anything starts, without importing Flower) and this module
maps each name to Flower's class of that name.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Strategy

from fedsplit.config.schema import STRATEGY_NAMES
from fedsplit.strategies.metric_average import weighted_metric_average

#: Flower's strategy arguments for averaging the replies' metrics (FedAvg and its family).
METRIC_AVERAGE_HOOKS = ("train_metrics_aggr_fn", "evaluate_metrics_aggr_fn")


def _builtin_strategies() -> dict[str, type[Strategy]]:
    """Flower's class for each name of :data:`fedsplit.config.schema.STRATEGY_NAMES`.

    The configuration owns the list of names (it validates ``strategy.name`` without importing
    Flower); a name is its Flower class's name in lower case (``fedavgm`` = ``FedAvgM``).
    """
    classes = {
        attr.lower(): obj
        for attr, obj in vars(flwr_strategy).items()
        if inspect.isclass(obj) and issubclass(obj, Strategy)
    }
    missing = [name for name in STRATEGY_NAMES if name not in classes]
    if missing:
        raise ImportError(f"flwr.serverapp.strategy has no class for strategy name(s) {missing}")
    return {name: classes[name] for name in STRATEGY_NAMES}


#: Strategy classes by configuration name, in the order of ``STRATEGY_NAMES``.
BUILTIN_STRATEGIES: dict[str, type[Strategy]] = _builtin_strategies()


class StrategyLoadError(ValueError):
    """A strategy that cannot be built; the message names the strategy and the reason."""


def load_strategy_class(name: str) -> type[Strategy]:
    """Resolve a built-in name or ``package.module:Class`` to a Strategy subclass."""
    if name.lower() in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name.lower()]
    if ":" not in name:
        raise StrategyLoadError(
            f"strategy.name = {name!r}: unknown strategy (allowed: {', '.join(BUILTIN_STRATEGIES)}, "
            "or package.module:Class)"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise StrategyLoadError(f"strategy.name = {name!r}: cannot import module {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StrategyLoadError(f"strategy.name = {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
        raise StrategyLoadError(
            f"strategy.name = {name!r}: {attr!r} is not a subclass of flwr.serverapp.strategy.Strategy"
        )
    return obj


#: Strategy arguments that ``strategy.*`` fields set (and the configuration checks): not in ``params``.
CHECKED_FIELDS = ("fraction_train", "fraction_evaluate", "min_train_nodes")


def check_param_type(cls: type, signature: inspect.Signature, key: str, value: Any) -> None:
    """Refuse a ``strategy.params`` value of another kind than the argument's default (a string
    for a number, a number for a flag): Flower's constructors store it as given and every round
    then fails on it.

    Raises
    ------
    StrategyLoadError
        Naming the parameter, the value and the kind of its default.
    """
    param = signature.parameters.get(key)
    default = None if param is None else param.default
    if default is None or default is inspect.Parameter.empty or callable(default):
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(default, float) or isinstance(value, int))
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
        raise StrategyLoadError(f"strategy.params.{key} = {value!r}: {cls.__name__} expects {kind} (its default is {default!r})")


def min_replies(strategy: Strategy) -> int:
    """The fewest replies with which ``strategy`` aggregates a round (Flower's Bulyan needs
    ``4 * num_malicious_nodes + 3`` and skips the round otherwise; 1 for the others)."""
    from flwr.serverapp.strategy import Bulyan

    if isinstance(strategy, Bulyan):
        return 4 * int(strategy.num_malicious_nodes) + 3
    return 1


def build_strategy(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 0.0,
    min_train_nodes: int = 1,
) -> Strategy:
    """Instantiate a strategy.

    The sampling arguments (``fraction_train``, ``fraction_evaluate``, ``min_*_nodes``) are passed
    only where the class accepts them; ``params`` are passed as they are, and an argument the class
    does not take is reported by name. A class that takes Flower's ``train_metrics_aggr_fn`` /
    ``evaluate_metrics_aggr_fn`` gets :func:`~fedsplit.strategies.metric_average.weighted_metric_average`
    unless ``params`` name another.
    """
    cls = load_strategy_class(name)
    signature = inspect.signature(cls.__init__)
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    accepted = set(signature.parameters) - {"self"}
    params = dict(params or {})
    unknown = [k for k in params if k not in accepted and not accepts_kwargs]
    if unknown:
        raise StrategyLoadError(
            f"strategy.params.{unknown[0]}: {cls.__name__} takes no such argument "
            f"(accepted: {', '.join(sorted(accepted)) or 'none'})"
        )
    if shadowed := [k for k in CHECKED_FIELDS if k in params]:
        raise StrategyLoadError(
            f"strategy.params.{shadowed[0]}: set strategy.{shadowed[0]} instead (that field is checked against "
            "the population; in params it would bypass the check)"
        )
    for key, value in params.items():
        check_param_type(cls, signature, key, value)
    sampling = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": min_train_nodes,
        "min_evaluate_nodes": 1,
        "min_available_nodes": min_train_nodes,
    }
    kwargs = {k: v for k, v in sampling.items() if k in accepted or accepts_kwargs}
    for hook in METRIC_AVERAGE_HOOKS:  # Flower's metric averaging, float for float, cheaper
        if hook in accepted:
            kwargs[hook] = weighted_metric_average
    kwargs.update(params)
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - constructor errors are the user's to see
        raise StrategyLoadError(f"strategy.name = {name!r}: constructor failed ({type(exc).__name__}: {exc})") from None
