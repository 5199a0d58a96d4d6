"""Tests only: ``restic init`` with a cheap key derivation for the repository it makes.

restic derives the key that opens a repository with scrypt, its cost calibrated at
``init`` to about half a second, and pays it on every command: a third of the time of
the restic-heavy test modules (test_pull: 169 restic commands, about 85 s of 204 s). This
runs the real ``restic init`` (its arguments and environment unchanged), then re-encrypts
the new repository's key files with scrypt's N=1024, r=8, p=1 (the master key, and so
every byte of the repository, is untouched), as restic's own tests do
(``TestUseLowSecurityKDFParameters``). Only a local repository whose password this
can read and prove (the key's MAC) is changed; anything else is left as restic made it.
``PULLBACK_TEST_STRONG_KDF=1`` turns it off (tests/conftest.py).

The key file format (restic's design document, "Keys, Encryption and MAC"): JSON with
``kdf``, ``N``, ``r``, ``p``, ``salt`` and ``data``; scrypt's 64 bytes are the AES-256
key, then the MAC's ``k`` and ``r``; ``data`` is IV, AES-256-CTR ciphertext and
Poly1305-AES(ciphertext) over ``r`` and AES_k(IV).

Run as ``python restic_kdf.py RESTIC ARGS...`` by tests/helpers/bin/restic; exits
with restic's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

CHEAP = {"N": 1024, "r": 8, "p": 1}


def _mac(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    mask = Cipher(algorithms.AES(key[:16]), modes.ECB()).encryptor().update(iv)
    poly = Poly1305(key[16:32] + mask)
    poly.update(ciphertext)
    return poly.finalize()


def _derive(password: bytes, salt: bytes, params: dict) -> bytes:
    n, r, p = params["N"], params["r"], params["p"]
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=1 << 30, dklen=64)


def _master(key_file: dict, passwords: list[bytes]) -> tuple[bytes, bytes] | None:
    """(the password that opens ``key_file``, its plaintext), or None."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    data = base64.b64decode(key_file["data"])
    iv, ciphertext, tag = data[:16], data[16:-16], data[-16:]
    for password in passwords:
        derived = _derive(password, base64.b64decode(key_file["salt"]), key_file)
        if _mac(derived[32:], iv, ciphertext) == tag:
            decryptor = Cipher(algorithms.AES(derived[:32]), modes.CTR(iv)).decryptor()
            return password, decryptor.update(ciphertext)
    return None


def weaken(repository: Path, passwords: list[bytes]) -> int:
    """Re-encrypt every key file of ``repository`` one of ``passwords`` opens; returns
    how many."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    done = 0
    for path in sorted((repository / "keys").iterdir()):
        key_file = json.loads(path.read_bytes())
        if key_file.get("kdf") != "scrypt" or key_file.get("N") == CHEAP["N"]:
            continue
        opened = _master(key_file, passwords)
        if opened is None:
            continue
        password, plaintext = opened
        salt, iv = os.urandom(64), os.urandom(16)
        derived = _derive(password, salt, CHEAP)
        ciphertext = (
            Cipher(algorithms.AES(derived[:32]), modes.CTR(iv)).encryptor().update(plaintext)
        )
        sealed = iv + ciphertext + _mac(derived[32:], iv, ciphertext)
        key_file.update(
            CHEAP, salt=base64.b64encode(salt).decode(), data=base64.b64encode(sealed).decode()
        )
        raw = json.dumps(key_file).encode()
        new = path.with_name(hashlib.sha256(raw).hexdigest())  # a key file is named by its hash
        new.write_bytes(raw)
        info = path.stat()
        os.chmod(new, info.st_mode & 0o7777)
        os.chown(new, info.st_uid, info.st_gid)
        path.unlink()
        done += 1
    return done


def _option(args: list[str], short: str, long: str) -> str | None:
    for index, arg in enumerate(args):
        if arg in (short, long) and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def _repository(args: list[str], made: bool = True) -> Path | None:
    value = _option(args, "-r", "--repo") or os.environ.get("RESTIC_REPOSITORY")
    named = _option(args, "--repository-file", "--repository-file")
    named = named or os.environ.get("RESTIC_REPOSITORY_FILE")
    if value is None and named:
        value = Path(named).read_text().strip()
    if not value:
        return None
    value = value.removeprefix("local:")
    if ":" in value.split("/", 1)[0]:  # rest:, sftp:, s3:, rclone:
        return None
    path = Path(value)
    return path if not made or (path / "keys").is_dir() else None


def _passwords(args: list[str]) -> list[bytes]:
    found = []
    if "RESTIC_PASSWORD" in os.environ:
        found.append(os.fsencode(os.environ["RESTIC_PASSWORD"]))
    file = _option(args, "-p", "--password-file") or os.environ.get("RESTIC_PASSWORD_FILE")
    if file:
        raw = Path(file).read_bytes()
        found += [raw, raw.rstrip(b"\r\n"), raw.strip()]
    return found


def main(restic: str, args: list[str]) -> int:
    """Run restic; a repository this run made (none before it: an argument "init" may be
    a path or a tag of another command) gets the cheap key."""
    try:
        repository = _repository(args, made=False)
        before = repository is not None and (repository / "config").exists()
    except (OSError, ValueError):
        before = True
    code = subprocess.run([restic, *args], check=False).returncode
    if code == 0 and not before:
        try:
            repository = _repository(args)
            if repository is not None:
                weaken(repository, _passwords(args))
        except (OSError, ValueError, KeyError, ImportError):
            pass  # left as restic made it: slower, never wrong
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
