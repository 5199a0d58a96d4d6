"""What pullback's client and server share: configuration and its JSON Schemas, the
command runner, locks, logging, secrets, time, mail and pings, the archive contract
(:mod:`.archive`) and the serve protocol (:mod:`.protocol`). It imports nothing of the
client, the server or the plugins (docs/architecture.md, *The parts*)."""

__version__ = "0.3.0"
"""The release, also in pyproject.toml and debian/changelog (tests/unit/test_version.py
holds the three together): a constant, because reading the installed package's metadata
costs every process, the serve endpoint's three per pull among them, about 30 ms."""
