"""The ClientApp object named in ``pyproject.toml``'s ``[tool.flwr.app.components]`` (``flwr run .``)."""

from fedsplit.clients.app import client_app

__all__ = ["client_app"]
