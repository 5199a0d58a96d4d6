"""Shared library of pullback: configuration, locks, the command runner, logging, reports."""

from importlib import metadata

try:
    __version__ = metadata.version("pullback")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
