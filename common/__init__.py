"""What pullback's client and server share: configuration and its JSON Schemas, the
command runner, locks, logging, secrets, time, mail and pings, the archive contract
(:mod:`.archive`) and the serve protocol (:mod:`.protocol`). It imports nothing of the
client, the server or the plugins (docs/architecture.md, *The parts*)."""

from importlib import metadata

try:
    __version__ = metadata.version("pullback")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
