"""Federated training through Flower, with cotrain's own training process doing the work.

Flower runs a fresh ClientApp process for every round; cotrain wants one long-lived training
process that owns the model and every knob. The ClientApp in `app/` is therefore a thin shim
(flwr + numpy, never torch) that hands the round's arrays to the training process over the
Unix-socket bridge in `bridge.py` and returns what comes back. `local_fleet.py` starts a
loopback SuperLink and SuperNodes for a self-contained demo, or one SuperNode for a real fleet.

This package imports nothing on purpose: the shim imports `bridge` from here on every round.
"""
