"""The safetensors file format, written and read with numpy alone.

Layout: an 8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian tensor bytes.
The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
section, in order, without gaps) and may hold "__metadata__": a map of strings to strings.
"""

import json
import math
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
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory; give a file name ending in .safetensors", str(path))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for array in tensors.values():
                f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half file behind
        raise


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file; the message is one line naming the file and what is wrong."""


MAX_HEADER = 100 * 2**20  # the reference implementation's limit: a header this big is not a real one


def _tensor(path: pathlib.Path, name: str, info, data_size: int) -> tuple[np.dtype, list[int], int, int]:
    """A header entry's dtype, shape and offsets, each checked against the format and the file's size."""
    def bad(what: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: tensor {name!r} {what}; the file is damaged or not a safetensors file, "
                                "write it again with `llm-jax export`")

    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise bad("lacks dtype, shape or data_offsets")
    if not isinstance(info["dtype"], str) or info["dtype"] not in DTYPES:
        raise bad(f"has dtype {info['dtype']!r}, which is none of {', '.join(DTYPES)}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise bad(f"has data_offsets {offsets!r}, not [begin, end] inside the {data_size}-byte data section")
    dtype = np.dtype(DTYPES[info["dtype"]])
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise bad(f"has {offsets[1] - offsets[0]} bytes for shape {shape} of {info['dtype']} "
                  f"({math.prod(shape) * dtype.itemsize} expected)")
    return dtype, shape, offsets[0], offsets[1]


def read_header(path: str | pathlib.Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries by name, metadata, the data section's offset), validated before anything is allocated."""
    path = pathlib.Path(path)
    size_on_disk = path.stat().st_size
    if size_on_disk < 8:
        raise SafetensorsError(f"{path} is {size_on_disk} bytes, too short for a safetensors file (8-byte header "
                               "length first); the file is damaged or not a safetensors file")
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(MAX_HEADER, size_on_disk - 8):
            raise SafetensorsError(f"{path}: header length {size} runs past the file's {size_on_disk} bytes or the "
                                   f"{MAX_HEADER}-byte limit; the file is damaged or not a safetensors file")
        raw = f.read(size)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise SafetensorsError(f"{path}: the header is not JSON ({e}); the file is damaged or not a safetensors "
                               "file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is a JSON {type(header).__name__}, not an object; the file is "
                               "damaged or not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ is not a map of strings to strings; the file is damaged or "
                               "not a safetensors file")
    data_size = size_on_disk - 8 - size
    entries = {name: _tensor(path, name, info, data_size) for name, info in header.items()}
    end = 0  # the format's rule: tensors cover the data section back to back, no overlap, no gap
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != end:
            raise SafetensorsError(f"{path}: tensor {name!r} starts at byte {begin} of the data section, not at "
                                   f"{end} where the one before it ends (overlapping or gapped tensors); the file is "
                                   "damaged or crafted, write it again with `llm-jax export`")
        end = stop
    if end != data_size:
        raise SafetensorsError(f"{path}: the tensors cover {end} of the data section's {data_size} bytes; the file "
                               "is damaged or crafted, write it again with `llm-jax export`")
    return entries, metadata, 8 + size


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate name {next(k for k in names if names.count(k) > 1)!r}")
    return dict(pairs)


def read(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, metadata); the tensors are views of one memory map of the file. A damaged or crafted
    file raises SafetensorsError (checked before anything is mapped or allocated)."""
    path = pathlib.Path(path)
    entries, metadata, start = read_header(path)
    if start == path.stat().st_size:  # no data section: numpy cannot map zero bytes
        data = np.zeros(0, np.uint8)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    tensors = {name: data[begin:end].view(dtype).reshape(shape) for name, (dtype, shape, begin, end) in entries.items()}
    return tensors, metadata
