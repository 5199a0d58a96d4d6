"""The archive: the contract between a client and the server, in one package.

The format, in twenty lines (the full text is docs/archive-format.md):

- An archive is one POSIX (PAX) tar stream, compressed with zstd (``.tar.zst``), gzip
  (``.tar.gz``) or not at all (``.tar``), named ``<host>-<YYYYmmddTHHMMSSZ><suffix>``.
- Its members are ``services/<service>/<task type>/...`` and, last, ``MANIFEST.sha256``:
  the sha256 of every regular file (hard links included) in ``sha256sum`` format.
- Headers keep what ``tar --format=posix --xattrs --acls`` keeps: numeric and named owners,
  modes (set-id bits too), nanosecond mtimes, symlinks, hard links, FIFOs,
  ``SCHILY.xattr.*`` (capabilities too) and ``SCHILY.acl.*`` records; files with holes are
  in GNU tar's PAX 1.0 sparse form; sockets and device nodes are not archived.
- Beside the archive lies ``<archive name>.json``, the sidecar (format 1): host, stamp,
  creation time, pullback version, ``ok``/``partial``, per service and task the status,
  counts, errors and warnings, and the archive's size, sha256 and compression.
- A client writes the archive under a temporary name, verifies it (the compressor's
  checksums while writing, or a full read-back against the manifest), then renames the
  archive and after it the sidecar under the archive-directory lock: a reader that sees a
  sidecar sees a complete archive. ``fetched/`` holds the archives the server took.
- The server trusts nothing of it: it checks the bytes against the sidecar's sha256, every
  member name and link against staging (``unpack``), and every file against the manifest.

Modules: ``tarformat`` (headers, reading), ``writer`` (the client's streaming writer),
``filedata`` (reading a file that may change), ``sparse``, ``tee`` (the compressor's
output), ``reader`` (decompress, hash and iterate a stream; verify a file), ``unpack``
(the server's safe unpacker), ``manifest``, ``sidecar``, ``tree_list`` (a stored
snapshot's other entries), ``stored`` (the names beside ``services/``), ``acl``,
``compression``, ``stats``, ``dumps`` (the names of database dumps) and ``directory``
(the archive directory: publish, list, retention).
This package imports only common's runtime modules (errors, log, runner, locks, fsutil,
schema, units), never the client, the server or the plugins.
"""
