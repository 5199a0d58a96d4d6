"""The compression formats of an archive and the commands that (de)compress them."""

from __future__ import annotations

import shutil

SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}


def compression_of(name: str) -> str:
    """The compression of an archive file, from its name. Raises ValueError if unknown."""
    for compression, suffix in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[1])):
        if name.endswith(suffix):
            return compression
    raise ValueError(f"not an archive name: {name}")


def compress_command(compression: str, level: int | None = None) -> list[str] | None:
    """argv of a filter compressing stdin to stdout, or None for ``none``. Without a
    ``level`` the tool's own default applies (zstd 3, gzip and pigz 6)."""
    if compression == "none":
        return None
    chosen = [f"-{level}"] if level else []
    if compression == "zstd":
        return ["zstd", "-q", "-c", *chosen, "-T0"]
    gzip = "pigz" if shutil.which("pigz") else "gzip"
    return [gzip, "-c", "-n", *chosen]


def decompress_command(compression: str) -> list[str] | None:
    """argv of a filter decompressing stdin to stdout, or None for ``none``."""
    if compression == "none":
        return None
    if compression == "zstd":
        return ["zstd", "-q", "-d", "-c"]
    return ["pigz" if shutil.which("pigz") else "gzip", "-d", "-c"]


def test_command(compression: str) -> list[str] | None:
    """argv of an integrity test of compressed data on stdin (the format's own checksum)."""
    if compression == "none":
        return None
    if compression == "zstd":
        return ["zstd", "-q", "-t"]
    return ["pigz" if shutil.which("pigz") else "gzip", "-t"]
