"""The Open Inference Protocol codec on real client output: tritonclient's own request bodies
(JSON and binary) and protobufs, decoded and checked; every refusal carries its status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as th
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from cotrain.ingress.protocol import (
    ModelSpec,
    ProtocolError,
    Served,
    decode_grpc_infer,
    decode_http_infer,
    encode_grpc_infer,
    encode_http_infer,
)

SPEC = ModelSpec("camera", image_size=8, num_classes=4, max_batch=4, variant="resnet18/fp32")
SERVED = Served("resnet18/fp32", 2, 3, 1.25, 4.5)


def body(x: np.ndarray, *, binary: bool, datatype: str = "FP32", binary_out: bool = False, rid: str = ""):
    i = th.InferInput("image", list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=binary)
    outputs = [th.InferRequestedOutput("logits", binary_data=binary_out)]
    return th.InferenceServerClient.generate_request_body([i], outputs, request_id=rid)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_tritonclient_bodies_decode_to_the_same_images(binary: bool, datatype: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    if datatype == "UINT8":
        x = (x * 255).astype(np.uint8)
    raw, header_length = body(x, binary=binary, datatype=datatype, rid="r1")
    decoded = decode_http_infer(SPEC, raw, header_length)
    assert decoded.images.dtype == x.dtype and np.array_equal(decoded.images, x)
    assert decoded.request_id == "r1" and decoded.batch == 2


def test_the_response_is_what_tritonclient_reads_back_in_both_forms() -> None:
    logits = np.arange(8, dtype=np.float32).reshape(2, 4)
    x = np.zeros((2, 3, 8, 8), np.float32)
    for binary_out in (False, True):
        raw, length = body(x, binary=True, binary_out=binary_out)
        request = decode_http_infer(SPEC, raw, length)
        payload, headers = encode_http_infer(SPEC, request, logits, SERVED)
        header_length = headers.get("inference-header-content-length")
        result = th.InferResult.from_response_body(
            payload, header_length=int(header_length) if header_length else None
        )
        assert np.array_equal(result.as_numpy("logits"), logits)
        params = result.get_response()["parameters"]
        assert params == {
            "variant": "resnet18/fp32",
            "model_version": 2,
            "batch_size": 3,
            "queue_ms": 1.25,
            "compute_ms": 4.5,
        }
        assert result.get_response()["model_version"] == "2"


def test_grpc_raw_and_typed_contents_decode_and_the_response_carries_parameters() -> None:
    x = np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="camera", id="g1")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "image", "FP32"
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.tobytes())
    decoded = decode_grpc_infer(SPEC, request)
    assert np.array_equal(decoded.images, x) and decoded.request_id == "g1"
    typed = pb.ModelInferRequest(model_name="camera")
    t2 = typed.inputs.add()
    t2.name, t2.datatype = "image", "FP32"
    t2.shape.extend(x.shape)
    t2.contents.fp32_contents.extend(x.ravel().tolist())
    assert np.allclose(decode_grpc_infer(SPEC, typed).images, x)
    response = encode_grpc_infer(SPEC, decoded, np.ones((1, 4), np.float32), SERVED, pb)
    assert response.parameters["variant"].string_param == "resnet18/fp32"
    assert response.parameters["batch_size"].int64_param == 3
    assert response.parameters["queue_ms"].double_param == 1.25
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [1.0] * 4


def _error(raw: bytes, header_length: int | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_http_infer(SPEC, raw, header_length)
    return info.value


def test_every_malformed_request_is_a_400_that_says_what_is_wrong() -> None:
    x = np.zeros((1, 3, 8, 8), np.float32)
    good, length = body(x, binary=True)
    assert length is not None
    cases = {
        "not valid JSON": (b"{not json", None),
        "must be a JSON object": (b"[1, 2]", None),
        "one input": (b'{"inputs": []}', None),
        "datatype INT64 is not accepted": (body(x.astype(np.int64), binary=False, datatype="INT64")[0], None),
        "shape [1, 3, 9, 8]": (body(np.zeros((1, 3, 9, 8), np.float32), binary=False)[0], None),
        "batch 5 is not in 1..4": (body(np.zeros((5, 3, 8, 8), np.float32), binary=False)[0], None),
        "truncated body": (good[:-10], length),
        "does not fit": (good, len(good) + 1),
        "values for shape": (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [1.0]}]}
            ).encode(),
            None,
        ),
        "unexpected input 'x'": (
            json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": []}]}
            ).encode(),
            None,
        ),
        "UINT8 values must be in 0..255": (
            json.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "UINT8", "shape": [1, 3, 8, 8], "data": [300] * 192}
                    ]
                }
            ).encode(),
            None,
        ),
        "unknown output": (
            json.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}
                    ],
                    "outputs": [{"name": "probs"}],
                }
            ).encode(),
            None,
        ),
    }
    for fragment, (raw, header_length) in cases.items():
        error = _error(raw, header_length)
        assert error.status == 400 and error.grpc_code == "INVALID_ARGUMENT", fragment
        assert fragment in error.message, (fragment, error.message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.one_of(st.none(), st.integers(-5, 4096)))
def test_arbitrary_bytes_decode_or_raise_a_protocol_error(raw: bytes, header_length: int | None) -> None:
    """Never a traceback, never an allocation beyond the body: a 4xx or a valid request."""
    try:
        decoded = decode_http_infer(SPEC, raw, header_length)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500
    else:
        assert decoded.images.nbytes <= len(raw) * 8 + 4 * 3 * 8 * 8 * 4


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {"name": json_values, "datatype": json_values, "shape": json_values, "data": json_values}
                ),
                max_size=2,
            )
        },
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    )
)
def test_structured_garbage_is_refused_with_a_4xx(request: dict) -> None:
    try:
        decode_http_infer(SPEC, json.dumps(request, allow_nan=True).encode(), None)
    except ProtocolError as exc:
        assert exc.status == 400


def test_metadata_names_the_real_tensors_with_a_batch_dimension() -> None:
    meta = SPEC.metadata()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"] == {"variant": "resnet18/fp32"} and meta["versions"] == ["1"]
