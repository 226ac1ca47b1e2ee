"""The Open Inference Protocol's tensor datatypes that have a fixed-size numpy equivalent.

The protocol's table (KServe v2 "Tensor Data Types") also has BYTES and BF16, which have no
numpy dtype of fixed size; the clients and servers here refuse those by their absence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
