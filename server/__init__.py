"""pullback-server: pull every client's newest archive over SSH into restic or borg.

``pull`` (:mod:`.pull`) runs one :class:`~.host_pull.HostPull` per host over a
:class:`~.host.HostContext`; ``maintain`` (:mod:`.maintain`) forgets, prunes, checks and
drills; ``verify`` (:mod:`.verify`) runs the restore drill; the storage engines live in
:mod:`.backends`; what a run leaves for people and tools is written by :mod:`.outputs`.
The package imports :mod:`pullback.common` only: it never runs plugin code nor imports
the client. See docs/architecture.md.
"""
