"""Files written whole or not at all, and file checksums.

Every file jscale writes that a later run reads (configs, decisions, caches' metadata) goes through `write_atomic`:
a temporary file renamed into place, so a killed process leaves the old version or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jscale.errors import resource_error


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise resource_error(e, path, "cannot write") from None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
