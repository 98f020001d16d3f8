"""fedsplit: federated and split training over emulated edge devices.

The core package (everything under ``fedsplit/`` except the Flower/Ray glue installed as
``fedsplit.clients``, ``fedsplit.strategies`` and ``fedsplit.simulation``) is plain
PyTorch/NumPy and importable without Flower or Ray.
"""

__version__ = "0.1.0"
