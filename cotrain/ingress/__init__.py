"""The network front end: the Open Inference Protocol over HTTP and gRPC (see protocol.py)."""
