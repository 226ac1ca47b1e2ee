"""The Open Inference Protocol (KServe v2) as cotrain speaks it: pure encoding and checks.

Nothing here touches a socket, a thread or a model: the HTTP and gRPC servers hand bytes or
protobuf messages in, get a validated `InferInput` (or a `ProtocolError` carrying the status to
answer with) out, and encode the answer. That keeps every rule of the protocol in one place,
testable on real client output (tritonclient's JSON and binary bodies and protobufs).

What a cotrain model accepts: one input tensor of images in the model's layout, NCHW with the
service's image size, as FP32 (already preprocessed, exactly what the model takes) or UINT8
(raw pixels 0..255, preprocessed on the server as the service's dataset is). The batch
dimension is -1: a request may carry up to the service's largest batch of images. It answers
with one FP32 output, the logits, and response `parameters` that say how it was served: the
variant, the model version, the batch size it ran in and the server-side queue and compute time.

Errors map to protocol statuses once, here: `ProtocolError.status` is the HTTP status, and
`grpc_code` its gRPC equivalent (the mapping Triton uses: 400 INVALID_ARGUMENT, 404 NOT_FOUND,
413 and 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 500 INTERNAL, 401 UNAUTHENTICATED).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
ACCEPTED_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
PROTOCOL_EXTENSIONS = ("binary_tensor_data", "parameters")

GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ProtocolError(Exception):
    """A request the protocol answers with an error status, never with a traceback."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES.get(self.status, "UNKNOWN")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for the batch dimension

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """What one cotrain service offers under its model name."""

    name: str
    image_size: int
    num_classes: int
    max_batch: int
    platform: str = "pytorch"
    version: str = "1"
    variant: str = ""

    @property
    def input(self) -> TensorSpec:
        return TensorSpec(INPUT_NAME, "FP32", (-1, 3, self.image_size, self.image_size))

    @property
    def output(self) -> TensorSpec:
        return TensorSpec(OUTPUT_NAME, "FP32", (-1, self.num_classes))

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [self.input.json()],
            "outputs": [self.output.json()],
        }
        if self.variant:
            meta["parameters"] = {"variant": self.variant}
        return meta


@dataclass(frozen=True)
class InferInput:
    """A decoded, checked inference request: `images` is [N, 3, S, S], FP32 or UINT8."""

    images: npt.NDArray[Any]
    request_id: str = ""
    binary_output: bool = False
    output_name: str = OUTPUT_NAME

    @property
    def batch(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class Served:
    """How a request was served, for the response's `parameters` (and the records)."""

    variant: str
    model_version: int
    batch_size: int
    queue_ms: float
    compute_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model_version": self.model_version,
            "batch_size": self.batch_size,
            "queue_ms": round(self.queue_ms, 3),
            "compute_ms": round(self.compute_ms, 3),
            **self.extra,
        }


def check_tensor(
    spec: ModelSpec, name: str, datatype: str, shape: list[int] | tuple[int, ...]
) -> np.dtype[Any]:
    """The numpy dtype of a declared input, or the ProtocolError (400) that says what is wrong."""
    if name != INPUT_NAME:
        raise ProtocolError(400, f"unexpected input {name!r}; model {spec.name!r} takes {INPUT_NAME!r}")
    dtype = ACCEPTED_DATATYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(
            400, f"input {name!r}: datatype {datatype} is not accepted (FP32 or UINT8 images)"
        )
    expected = (3, spec.image_size, spec.image_size)
    if len(shape) != 4 or tuple(shape[1:]) != expected or not all(isinstance(d, int) for d in shape):
        raise ProtocolError(
            400, f"input {name!r}: shape {list(shape)} is not [N, {', '.join(map(str, expected))}]"
        )
    if not 1 <= shape[0] <= spec.max_batch:
        raise ProtocolError(400, f"input {name!r}: batch {shape[0]} is not in 1..{spec.max_batch}")
    return dtype


def _array(dtype: np.dtype[Any], shape: list[int], raw: bytes | memoryview) -> npt.NDArray[Any]:
    expected = math.prod(shape) * dtype.itemsize  # np.prod costs ~10 µs on a short list
    if len(raw) != expected:
        raise ProtocolError(
            400, f"input {INPUT_NAME!r}: {len(raw)} bytes of data for shape {shape}, expected {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _json_data(dtype: np.dtype[Any], shape: list[int], data: Any) -> npt.NDArray[Any]:
    """The `data` of a JSON tensor: flat or nested numbers, row-major, exactly as many as the shape."""
    if not isinstance(data, list):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: data must be a list of numbers")
    try:
        array = np.asarray(data, dtype=np.float64 if dtype.kind == "f" else np.int64)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(400, f"input {INPUT_NAME!r}: data is not a list of numbers ({exc})") from None
    if array.size != math.prod(shape):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: {array.size} values for shape {shape}")
    if dtype.kind == "u" and (array.min(initial=0) < 0 or array.max(initial=0) > 255):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: UINT8 values must be in 0..255")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(400, f"input {INPUT_NAME!r}: values must be finite")
    return array.astype(dtype).reshape(shape)


def decode_http_infer(spec: ModelSpec, body: bytes, header_length: int | None) -> InferInput:
    """An HTTP infer body: JSON, or JSON then binary tensor data (`Inference-Header-Content-Length`)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(
            400, f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body"
        )
    head = body if header_length is None else body[:header_length]
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(400, f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, "request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"request must have one input, {INPUT_NAME!r}")
    tensor = inputs[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise ProtocolError(400, "an input needs name, datatype and shape")
    dtype = check_tensor(spec, name, datatype, shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "input parameters must be an object")
    binary_size = params.get("binary_data_size")
    if binary_size is not None:
        if header_length is None:
            raise ProtocolError(400, "binary_data_size given without Inference-Header-Content-Length")
        if not isinstance(binary_size, int) or binary_size < 0:
            raise ProtocolError(400, "binary_data_size must be a non-negative integer")
        raw = memoryview(body)[header_length:]
        if len(raw) != binary_size:
            raise ProtocolError(
                400, f"binary data is {len(raw)} bytes, binary_data_size says {binary_size} (truncated body?)"
            )
        images = _array(dtype, shape, raw)
    else:
        if header_length is not None and len(body) > header_length:
            raise ProtocolError(400, "binary data follows the header but no input declares binary_data_size")
        images = _json_data(dtype, shape, tensor.get("data"))
    binary_output, output_name = _wanted_output(request)
    request_id = request.get("id", "")
    return InferInput(images, str(request_id) if request_id is not None else "", binary_output, output_name)


def _wanted_output(request: dict[str, Any]) -> tuple[bool, str]:
    params = request.get("parameters") or {}
    binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = request.get("outputs")
    if outputs is None:
        return binary, OUTPUT_NAME
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise ProtocolError(400, f"outputs must list at most one output, {OUTPUT_NAME!r}")
    if not outputs:
        return binary, OUTPUT_NAME
    wanted = outputs[0]
    if not isinstance(wanted, dict) or wanted.get("name") != OUTPUT_NAME:
        raise ProtocolError(400, f"unknown output; the model's output is {OUTPUT_NAME!r}")
    out_params = wanted.get("parameters") or {}
    if isinstance(out_params, dict) and "binary_data" in out_params:
        binary = bool(out_params["binary_data"])
    return binary, OUTPUT_NAME


def encode_http_infer(
    spec: ModelSpec, request: InferInput, logits: npt.NDArray[np.float32], served: Served
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then the logits' bytes when asked."""
    logits = np.ascontiguousarray(logits, dtype="<f4")
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(logits.shape)}
    raw = b""
    if request.binary_output:
        raw = logits.tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = logits.ravel().tolist()
    response: dict[str, Any] = {
        "model_name": spec.name,
        "model_version": str(served.model_version),
        "outputs": [output],
        "parameters": served.parameters(),
    }
    if request.request_id:
        response["id"] = request.request_id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not raw:
        return head, {"content-type": "application/json"}
    return head + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def error_json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def decode_grpc_infer(spec: ModelSpec, request: Any) -> InferInput:
    """A `ModelInferRequest`: `raw_input_contents` or typed `contents`."""
    if len(request.inputs) != 1:
        raise ProtocolError(400, f"request must have one input, {INPUT_NAME!r}")
    tensor = request.inputs[0]
    shape = [int(d) for d in tensor.shape]
    dtype = check_tensor(spec, tensor.name, tensor.datatype, shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise ProtocolError(400, "raw_input_contents must hold exactly one tensor")
        images = _array(dtype, shape, request.raw_input_contents[0])
    else:
        contents = tensor.contents
        values = contents.fp32_contents if dtype.kind == "f" else contents.uint_contents
        images = _json_data(dtype, shape, list(values))
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise ProtocolError(400, f"unknown output {output.name!r}; the model's output is {OUTPUT_NAME!r}")
    return InferInput(images, request.id)


def encode_grpc_infer(
    spec: ModelSpec, request: InferInput, logits: npt.NDArray[np.float32], served: Served, pb: Any
) -> Any:
    """A `ModelInferResponse` (`pb` is tritonclient's service_pb2) with the logits as raw bytes."""
    logits = np.ascontiguousarray(logits, dtype="<f4")
    response = pb.ModelInferResponse(
        model_name=spec.name, model_version=str(served.model_version), id=request.request_id
    )
    out = response.outputs.add()
    out.name, out.datatype = OUTPUT_NAME, "FP32"
    out.shape.extend(logits.shape)
    response.raw_output_contents.append(logits.tobytes())
    for key, value in served.parameters().items():
        param = response.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)
    return response
