"""The compressor's output, taken as it comes: hashed for the sidecar, written to the
archive file and fed to the format's own integrity test (``zstd -t``, ``gzip -t``) at the
same time, so the archive is verified while it is written instead of read back after."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path

from .. import forks
from ..errors import ArchiveError, CommandError
from ..fsutil import write_all
from ..runner import Runner, RunningCommand

CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031


class Tee:
    """Takes the compressor's output as it comes: hashes it (for the sidecar), writes it to
    the file and feeds the format's integrity test (``zstd -t``) at the same time, so the
    archive is verified while it is written instead of being read back afterwards."""

    def __init__(self, source: int, target: int, runner: Runner, test_argv: list[str] | None):
        self.source = source
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None
        self.tester: RunningCommand | None = None
        self.test_fd = -1
        if test_argv:
            read_end, test_fd = os.pipe2(os.O_CLOEXEC)
            self.test_fd = forks.kept_from_forks(test_fd)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.test_fd, _F_SETPIPE_SZ, CHUNK)
            with os.fdopen(read_end, "rb", buffering=0) as stdin:
                self.tester = runner.start(test_argv, stdin=stdin, level=10)
        self.thread = threading.Thread(target=self._run, name="archive-tee", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while data := os.read(self.source, CHUNK):
                self.sha256.update(data)
                write_all(self.target, data)
                self.size += len(data)
                if self.test_fd >= 0:
                    try:
                        write_all(self.test_fd, data)
                    except BrokenPipeError:  # the tester gave up; its exit status says why
                        forks.close(self.test_fd)
                        self.test_fd = -1
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.source)
            if self.test_fd >= 0:
                forks.close(self.test_fd)
                self.test_fd = -1

    def finish(self, path: Path) -> None:
        """Wait for the last bytes; raises ArchiveError for a write error or bad data."""
        self.thread.join()
        if self.error is not None:
            self.stop()
            raise ArchiveError(f"cannot write {path}: {self.error.strerror}")
        if self.tester is not None:
            tester, self.tester = self.tester, None
            try:
                tester.wait()
            except CommandError as exc:
                reason = exc.tail[-1] if exc.tail else exc.reason
                raise ArchiveError(f"{path.name} fails its integrity test: {reason}") from None

    def stop(self) -> None:
        if self.tester is not None:
            self.tester.stop(grace=2.0)
            with contextlib.suppress(CommandError):
                self.tester.wait()
            self.tester = None
