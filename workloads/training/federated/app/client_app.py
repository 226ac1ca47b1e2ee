"""The ClientApp: a thin shim that forwards each round to cotrain's training process.

Flower starts this module in a fresh `flwr-clientapp` process for every train and evaluate
message. It imports only flwr, numpy and cotrain's bridge (never torch), so a round costs a
process start, not a model build; the training itself happens in cotrain's long-lived
training process, under the same knobs (threads, pause, affinity) as any other training.

The bridge socket comes from the SuperNode's `--node-config bridge-socket=...`: it belongs to
the node, not to the run. Timeouts come from the run config. Array keys are kept as the server
sent them, so replies from all clients aggregate key by key.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cotrain.workloads.training.federated.bridge import BridgeClient, ConfigValue

BRIDGE_SOCKET_KEY = "bridge-socket"
ARRAYS_KEY = "arrays"  # FedAvg's default arrayrecord_key
CONFIG_KEY = "config"  # FedAvg's default configrecord_key
METRICS_KEY = "metrics"
NUM_EXAMPLES_KEY = "num-examples"  # FedAvg's default weighted_by_key
EVAL_LOSS_KEY = "eval_loss"

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    received = _arrays(msg)
    result = _client(context).fit(received.to_numpy_ndarrays(), _config(msg))
    if len(result.arrays) != len(received):
        raise ValueError(f"trainer returned {len(result.arrays)} arrays for {len(received)} received")
    arrays = ArrayRecord(
        array_dict={key: Array(a) for key, a in zip(received.keys(), result.arrays, strict=True)}
    )
    metrics = MetricRecord({**result.metrics, NUM_EXAMPLES_KEY: result.num_examples})
    return Message(RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    result = _client(context).evaluate(_arrays(msg).to_numpy_ndarrays(), _config(msg))
    metrics = MetricRecord(
        {**result.metrics, EVAL_LOSS_KEY: result.loss, NUM_EXAMPLES_KEY: result.num_examples}
    )
    return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)


def _client(context: Context) -> BridgeClient:
    socket_path = context.node_config.get(BRIDGE_SOCKET_KEY)
    if not isinstance(socket_path, str) or not socket_path:
        raise ValueError(f"this SuperNode has no --node-config {BRIDGE_SOCKET_KEY}=<path>")
    return BridgeClient(
        Path(socket_path),
        timeout_s=float(context.run_config["bridge-timeout-s"]),
        connect_timeout_s=float(context.run_config["bridge-connect-timeout-s"]),
    )


def _arrays(msg: Message) -> ArrayRecord:
    records = msg.content.array_records
    if ARRAYS_KEY not in records:
        raise ValueError(f"message has no ArrayRecord {ARRAYS_KEY!r}")
    return records[ARRAYS_KEY]


def _config(msg: Message) -> dict[str, ConfigValue]:
    """The round's ConfigRecord as JSON scalars; bytes and lists cannot cross the bridge."""
    record = msg.content.config_records.get(CONFIG_KEY)
    config: dict[str, ConfigValue] = {}
    for key, value in (record or {}).items():
        if not isinstance(value, str | int | float | bool):
            raise TypeError(f"config {key!r} is a {type(value).__name__}; the bridge carries scalars only")
        config[key] = value
    return config
