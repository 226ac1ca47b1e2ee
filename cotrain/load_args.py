"""The flags of `cotrain load`, apart from the client itself so that the CLI builds its parser
without importing numpy or tritonclient."""

from __future__ import annotations

import argparse

MAX_IN_FLIGHT = 4096
"""Requests outstanding at once, at most; beyond it a request is recorded as `in_flight_limit`."""


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `cotrain load`, shared by `load_main` and the cotrain CLI."""
    parser.add_argument(
        "url", metavar="URL", help="grpc://host:port, http://host:port (grpcs://, https://: TLS)"
    )
    parser.add_argument("--model", required=True, metavar="NAME", help="the model to send to")
    parser.add_argument(
        "--arrivals",
        required=True,
        metavar="FILE",
        help="arrivals YAML: {process: ..., ...}, an arrivals: key, or an experiment file",
    )
    parser.add_argument("--duration", required=True, type=float, metavar="S", help="seconds of sending")
    parser.add_argument("--out", required=True, metavar="DIR", help="where requests.csv and summary.json go")
    parser.add_argument(
        "--token-file", dest="token_file", metavar="F", help="file with a bearer token to send"
    )
    parser.add_argument(
        "--timeout-s", dest="timeout_s", type=float, default=10.0, metavar="S", help="per-request timeout"
    )
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="images per request")
    parser.add_argument(
        "--wait-ready-s",
        dest="wait_ready_s",
        type=float,
        default=30.0,
        metavar="S",
        help="how long to wait for the server and model to be ready",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the input data")
    parser.add_argument("--datatype", metavar="TYPE", help="override the model's input datatype, e.g. UINT8")
    parser.add_argument("--ca", metavar="FILE", help="CA bundle (PEM) to verify a TLS server with")
    parser.add_argument(
        "--max-in-flight",
        dest="max_in_flight",
        type=int,
        default=MAX_IN_FLIGHT,
        metavar="N",
        help="requests outstanding at once; more are recorded as in_flight_limit",
    )
