"""pullback-server: pull every client's newest archive over SSH into restic or borg."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("pullback-server: the server side is not built yet (see issue 3)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
