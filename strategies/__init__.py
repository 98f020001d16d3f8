"""Server-side strategy glue: Flower strategies by name or import path, and fedsplit's wrappers."""

from fedsplit.strategies.registry import BUILTIN_STRATEGIES, StrategyLoadError, build_strategy, load_strategy_class

__all__ = ["BUILTIN_STRATEGIES", "StrategyLoadError", "build_strategy", "load_strategy_class"]
