"""Reading the files users and services hand over: gzip by magic number (whatever the name), JSON answers.

Every client reads downloads the same way, and a damaged file is the same clear error everywhere.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from sae_genomics_core.annotations.errors import PayloadError

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def gunzip_if_needed(content: bytes, source: str, name: str, hint: str = "download it again") -> bytes:
    """`content` gunzipped when it is gzip; a damaged or truncated gzip is a PayloadError naming the file."""
    if content[:2] != GZIP_MAGIC:
        return content
    try:
        return gzip.decompress(content)
    except (EOFError, OSError, zlib.error) as error:
        raise PayloadError(f"{source}: {name} is a damaged or truncated gzip ({error}); {hint}") from error


def read_file_bytes(path: Path, source: str) -> bytes:
    """A whole file's bytes, plain or gzipped."""
    return gunzip_if_needed(Path(path).read_bytes(), source, Path(path).name)


def open_stream(path: Path) -> BinaryIO:
    """A binary stream over a plain or gzipped file, for files too big to hold (errors surface on read)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def read_json_file(path: Path, source: str) -> Any:
    """A saved API answer; unreadable JSON is a PayloadError saying to save it again."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(
            f"{source}: {Path(path).name} is not readable JSON ({error}); save the API answer again"
        ) from error
