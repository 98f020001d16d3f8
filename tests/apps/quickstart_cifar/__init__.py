"""quickstart_cifar: a Flower / PyTorch app in the shape of Flower's PyTorch quickstart.

Written only against ``flwr.app``, ``flwr.clientapp`` and ``flwr.serverapp`` (no fedsplit import)
and reporting no FLOPs, so that fedsplit's compute metering is what puts its work in the ledger
(``tests/test_compute_metering.py``). The data are random CIFAR-shaped tensors (3x32x32, 10
classes) drawn from the partition id: nothing is downloaded.
"""
