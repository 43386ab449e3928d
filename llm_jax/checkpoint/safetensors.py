"""safetensors files through the `safetensors` package, which validates the header (lengths, dtypes, shapes,
offsets covering the data section exactly) before anything is allocated. This module adds what llm_jax needs on
top: atomic writes, and one-line errors that name the file."""

import contextlib
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file; the message is one line naming the file and what is wrong."""


def write(path: str | pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write atomically (a temporary file renamed into place): a reader never sees half a file."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory; give a file name ending in .safetensors", str(path))
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half file behind
        raise


def _damaged(path: pathlib.Path, e: Exception) -> SafetensorsError:
    what = str(e).splitlines()[0] if str(e) else type(e).__name__
    return SafetensorsError(f"{path}: {what}; the file is damaged or not a safetensors file, write it again with "
                            "`llm-jax export`")


@contextlib.contextmanager
def opened(path: str | pathlib.Path) -> Iterator[tuple[list[str], Callable[[str], np.ndarray], dict[str, str]]]:
    """(tensor names, read(name), metadata) of a file whose tensors are read one at a time, on demand."""
    path = pathlib.Path(path)
    try:
        f = safe_open(path, framework="numpy").__enter__()
    except (SafetensorError, OSError) as e:
        raise _damaged(path, e) from None

    def read(name: str) -> np.ndarray:
        try:
            return f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise _damaged(path, e) from None

    try:
        yield list(f.keys()), read, dict(f.metadata() or {})
    finally:
        f.__exit__(None, None, None)


def read_header(path: str | pathlib.Path) -> dict[str, str]:
    """The file's metadata, after the package has validated its whole header (no tensor data is read)."""
    with opened(path) as (_, _, metadata):
        return metadata


def read(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, metadata); a damaged or crafted file raises SafetensorsError."""
    with opened(path) as (names, read_one, metadata):
        return {name: read_one(name) for name in names}, metadata
