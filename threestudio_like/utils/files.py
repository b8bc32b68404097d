"""Small file helpers shared by the run status, the batch state and the gallery."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never half.

    The text goes to a temporary file in the same folder, is flushed to disk and moved over
    ``path``; the temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; moved over ``path`` when the block
    succeeds, removed when it fails (readers never see a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
