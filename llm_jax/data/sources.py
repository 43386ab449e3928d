"""Read documents from files: plain text, JSON Lines, Parquet and ArrayRecord, local or remote (etils.epath).

Bad input is never silent: every problem either raises a DataError naming the file (and line or record), or,
where the config says to skip or replace, is counted in `SourceStats` and reported in the run's log.
"""

import collections
import dataclasses
import glob
import json
from collections.abc import Iterator, Sequence

from etils import epath

FORMATS = ("auto", "text", "jsonl", "parquet", "arrayrecord")
EXTENSIONS = {".txt": "text", ".md": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl",
              ".parquet": "parquet", ".arrayrecord": "arrayrecord", ".array_record": "arrayrecord"}


class DataError(ValueError):
    """Bad input data; the message names the file, and the line or record where there is one."""


@dataclasses.dataclass
class SourceOptions:
    format: str = "auto"  # auto picks by file extension
    text_field: str = "text"  # JSONL field / Parquet column
    text_split: str = "file"  # plain text: a document per "file" or per "blank_line"-separated block
    bad_utf8: str = "replace"  # replace (U+FFFD) or skip the document
    bad_json: str = "fail"  # fail or skip a JSONL line that does not parse


@dataclasses.dataclass
class SourceStats:
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items())) or "no problems"


def expand(patterns: str | Sequence[str]) -> list[epath.Path]:
    """Comma-separated paths or globs -> files, in a fixed order. Nothing matched, or a missing file, is an error."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[epath.Path] = []
    for pattern in (p.strip() for item in patterns for p in item.split(",") if p.strip()):
        if "://" in pattern:  # remote: let the filesystem layer glob
            parent, _, name = pattern.rpartition("/")
            matched = sorted(epath.Path(parent).glob(name)) if any(c in name for c in "*?[") else [
                epath.Path(pattern)]
        else:
            matched = [epath.Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        matched = [m for m in matched if m.exists() and not m.is_dir()]
        if not matched:
            raise DataError(f"'{pattern}' matches no file; check the path (globs like data/*.jsonl are allowed)")
        files += matched
    if not files:
        raise DataError("no input files given")
    return files


def file_format(path: epath.Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from the extension '{suffix}'; set data.format to one of "
                        f"{', '.join(FORMATS[1:])}")
    return EXTENSIONS[suffix]


def _decode(raw: bytes, opts: SourceOptions, stats: SourceStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if opts.bad_utf8 == "skip":
            stats.counts["documents skipped for non-UTF-8 bytes"] += 1
            return None
        stats.counts["documents with non-UTF-8 bytes replaced"] += 1
        return raw.decode("utf-8", errors="replace")


def _text(path: epath.Path, opts: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    text = _decode(path.read_bytes(), opts, stats)
    if text is None:
        return
    if opts.text_split == "file":
        yield text
    else:
        yield from (block.strip("\n") for block in text.replace("\r\n", "\n").split("\n\n"))


def _lines(path: epath.Path) -> Iterator[bytes]:
    """The file's lines as bytes.splitlines() cuts them (a lone \\r ends a line too), read as a stream."""
    with path.open("rb") as f:
        for chunk in f:
            yield from chunk.splitlines()


def _jsonl(path: epath.Path, opts: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    for lineno, raw in enumerate(_lines(path), 1):
        if not raw.strip():
            continue
        line = _decode(raw, opts, stats)
        if line is None:
            continue
        try:
            record = json.loads(line)
            text = record[opts.text_field]
            if not isinstance(text, str):
                raise TypeError(f"field '{opts.text_field}' is {type(text).__name__}, not a string")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if opts.bad_json == "skip":
                stats.counts["JSONL lines skipped"] += 1
                continue
            what = f"no field '{opts.text_field}'" if isinstance(e, KeyError) else str(e)
            raise DataError(f"{path}:{lineno}: bad JSON line ({what}); fix it, set data.text_field, or set "
                            "data.bad_json=skip") from None
        yield text


def _parquet(path: epath.Path, opts: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    def refused(e: Exception) -> DataError:
        if isinstance(e, KeyError) or opts.text_field in str(e):
            return DataError(f"{path}: Parquet file has no column '{opts.text_field}'; set data.text_field")
        return DataError(f"{path}: not a readable Parquet file ({e.__class__.__name__}: {e})")

    with path.open("rb") as f:
        try:
            parquet = pq.ParquetFile(f)
            if opts.text_field not in parquet.schema_arrow.names:
                raise KeyError(opts.text_field)
            batches = parquet.iter_batches(batch_size=1024, columns=[opts.text_field])  # a row group at a time
            for batch in batches:
                for value in batch.column(0).to_pylist():
                    if value is None:
                        stats.counts["null Parquet values skipped"] += 1
                        continue
                    yield value if isinstance(value, str) else _decode(bytes(value), opts, stats)
        except DataError:
            raise
        except Exception as e:  # pyarrow raises several types for a missing column or a damaged file
            raise refused(e) from None


def _arrayrecord(path: epath.Path, opts: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    """Each record is one document as UTF-8 bytes."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a readable ArrayRecord file ({e})") from None
    try:
        for i in range(reader.num_records()):
            yield _decode(reader.read([i])[0], opts, stats)
    finally:
        reader.close()


READERS = {"text": _text, "jsonl": _jsonl, "parquet": _parquet, "arrayrecord": _arrayrecord}


def read_file(path: epath.Path, opts: SourceOptions, stats: SourceStats) -> Iterator[str]:
    """Every non-empty document of one file, in order."""
    if path.stat().length == 0:
        raise DataError(f"{path}: file is empty; remove it from the inputs")
    for doc in READERS[file_format(path, opts.format)](path, opts, stats):
        if doc is None:
            continue
        if not doc.strip():
            stats.counts["empty documents skipped"] += 1
            continue
        stats.counts["documents"] += 1
        yield doc


def read_documents(patterns: str | Sequence[str], opts: SourceOptions, stats: SourceStats) -> Iterator[str]:
    """Every non-empty document of every matched file, in a fixed order."""
    for path in expand(patterns):
        yield from read_file(path, opts, stats)
