"""The Flower app directory that `flwr run` bundles: `pyproject.toml`, the ServerApp, the shim.

Flower loads `server_app` and `client_app` as top-level modules from the bundle, so nothing here
may rely on being imported as part of this package. It is a package only so that it installs
with cotrain (with its pyproject.toml as package data) and is type-checked with the rest.
"""
