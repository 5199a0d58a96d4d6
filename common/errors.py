"""The exceptions pullback raises on purpose, each with the exit code it maps to.

Every command-line entry point catches :class:`PullbackError` and exits with its
``exit_code``; anything else escaping is a bug and is shown with its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


class PullbackError(Exception):
    """An expected failure, told to the user in plain words (no traceback)."""

    exit_code = EXIT_FAILED


class ConfigError(PullbackError):
    """One or more configuration problems; each names file, line, key and what was expected."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(PullbackError):
    """The command line asks for something that does not exist (a host, a service, a
    snapshot) or cannot be done as asked; nothing was changed."""

    exit_code = EXIT_CONFIG


class LockBusy(PullbackError):
    """A lock is held by a live process."""

    exit_code = EXIT_LOCKED


class CommandError(PullbackError):
    """An external command failed; carries its exit code and the last lines it printed."""

    def __init__(self, display: str, exit_code: int | None, tail: list[str], reason: str = ""):
        self.display = display
        self.exit_code_of_command = exit_code
        self.tail = tail
        if not reason:
            reason = f"exited with code {exit_code}" if exit_code is not None else "failed"
        text = f"command failed: {display}: {reason}"
        if tail:
            text += "\n" + "\n".join(f"  | {line}" for line in tail)
        super().__init__(text)
        self.reason = reason


class CommandTimeout(CommandError):
    """An external command ran past its timeout and was killed."""


class InternalError(PullbackError):
    """A bug, caught where the command can still report it (its traceback logged there);
    said in words that hold no exception message."""

    exit_code = EXIT_SOFTWARE


class Interrupted(PullbackError):
    """SIGTERM, SIGINT or SIGHUP arrived; raised in the main thread so ``finally`` blocks
    run. Its exit code is the shell's for that signal (128 + its number: 143, 130, 129)."""

    def __init__(self, signum: int, why: str | None = None):
        """``why``: the words when pullback sent the signal itself (a run past its
        ``run_timeout``); "interrupted by SIGTERM" otherwise."""
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(why or f"interrupted by {signal.Signals(signum).name}")


class ArchiveError(PullbackError):
    """An archive could not be written, read or verified; nothing from it is used."""


class LocalArchiveError(ArchiveError):
    """An archive could not be taken for a reason of this machine's own: its disk full
    or unwritable, its time up. Nothing says the archive is damaged, so the server does
    not ask its client for a full archive."""


def describe(exc: BaseException) -> str:
    """An exception in plain words: the message of pullback's own errors, ``file: reason``
    for an operating-system error, the type and message of anything else (a bug)."""
    if isinstance(exc, PullbackError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"
