"""The data dir's master secret, and what is derived from it: key encryption, key hashing, cookies.

`pool.db` holds keys only as AES-GCM ciphertext plus an HMAC for uniqueness, so the database
file alone reveals no key; the secret lives beside it with 0600 permissions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_FILE = "secret.key"
_NONCE = 12


def ensure_private_dir(path: Path) -> None:
    """Create the data dir readable by its owner only (an existing one keeps its mode)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _load_or_create(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != 32:
            raise RuntimeError(f"{path} is damaged: expected 32 bytes, found {len(secret)}") from None
        os.chmod(path, 0o600)
        return secret
    secret = os.urandom(32)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret


class Secrets:
    """Purpose-bound subkeys of one master secret."""

    def __init__(self, data_dir: Path) -> None:
        master = _load_or_create(data_dir / SECRET_FILE)
        self._aead = AESGCM(self._derive(master, b"key-encryption"))
        self._hash_key = self._derive(master, b"key-hash")
        self.cookie_key = self._derive(master, b"session-cookie")

    @staticmethod
    def _derive(master: bytes, purpose: bytes) -> bytes:
        return hashlib.blake2b(purpose, key=master, digest_size=32).digest()

    def encrypt(self, secret: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, secret.encode(), None)

    def decrypt(self, blob: bytes) -> str:
        return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], None).decode()

    def fingerprint(self, secret: str) -> str:
        """A keyed hash: equal keys collide, yet a guessed key can't be confirmed without the secret."""
        return hmac.new(self._hash_key, secret.encode(), hashlib.sha256).hexdigest()
