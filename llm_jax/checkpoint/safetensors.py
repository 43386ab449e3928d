"""The safetensors file format, written and read with numpy alone.

Layout: an 8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian tensor bytes.
The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
section, in order, without gaps) and may hold "__metadata__": a map of strings to strings.
"""

import json
import pathlib
import struct

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def write(path: str | pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write atomically (a temporary file renamed into place): a reader never sees half a file."""
    header, offset = {"__metadata__": metadata}, 0
    for name, array in tensors.items():
        if array.dtype not in NAMES:
            raise ValueError(f"{name}: dtype {array.dtype} has no safetensors name")
        header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)


def read(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, metadata); the tensors are views of one memory map of the file."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know")
        tensors[name] = data[begin:end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, metadata
