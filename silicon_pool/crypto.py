"""The data dir's master secret, and what is derived from it: key encryption, key hashing, cookies.

`pool.db` holds keys and tokens only as AES-GCM ciphertext (keys also as an HMAC for uniqueness),
so the database file alone reveals none of them; the secret lives beside it with 0600 permissions.
Without that very secret nothing in `pool.db` can be read, so a missing or different one stops
start-up before anything is written, instead of a new secret quietly orphaning every key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_FILE = "secret.key"
_NONCE = 12
_SIZE = 32


class SecretError(RuntimeError):
    """secret.key is missing, damaged or not pool.db's: start-up stops, nothing is written."""


def ensure_private_dir(path: Path) -> None:
    """Create the data dir readable by its owner only (an existing one keeps its mode)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _missing(path: Path) -> SecretError:
    return SecretError(
        f"缺少 {path}，而同一目录的 pool.db 中存有加密的 API Key 或令牌：没有这个文件就无法读取它们。"
        f"请把备份的 secret.key 放回 {path}（与 pool.db 放在一起）；没有备份则只能换一个 --data-dir 重新开始。"
        "未做任何修改。\n"
        f"{path} is missing, but pool.db beside it holds encrypted API keys or tokens, which cannot be read "
        f"without it. Put your backup of secret.key back at {path} (beside pool.db); without a backup, start "
        "over with another --data-dir. Nothing was changed."
    )


def _mismatch(path: Path) -> SecretError:
    return SecretError(
        f"{path} 与同一目录的 pool.db 不匹配：pool.db 中的 Key 和令牌是用另一个 secret.key 加密的，用它无法解密。"
        f"请把与这个 pool.db 一起备份的 secret.key 放回 {path}。未做任何修改。\n"
        f"{path} does not match the pool.db beside it: its keys and tokens were encrypted with another "
        f"secret.key and cannot be read with this one. Put the secret.key backed up with this pool.db back at "
        f"{path}. Nothing was changed."
    )


def _damaged(path: Path, zh: str, en: str) -> SecretError:
    return SecretError(
        f"{path} 无法使用（{zh}）：请从备份恢复 secret.key。未做任何修改。\n"
        f"{path} cannot be used ({en}): restore secret.key from your backup. Nothing was changed."
    )


def _read(path: Path) -> bytes | None:
    """The stored master secret, None if there is none; SecretError if it cannot be one."""
    try:
        with path.open("rb") as f:
            secret, size = f.read(_SIZE + 1), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise _damaged(path, f"无法读取：{why}", f"cannot be read: {why}") from None
    if len(secret) != _SIZE:
        raise _damaged(path, f"应为 {_SIZE} 字节，实际 {size} 字节", f"expected {_SIZE} bytes, found {size}")
    return secret


def _create(path: Path) -> bytes:
    """A new master secret; if another process made one first, that one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path) or _create(path)
    secret = os.urandom(_SIZE)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret


class Secrets:
    """Purpose-bound subkeys of one master secret."""

    def __init__(self, data_dir: Path, written: Sequence[bytes] = ()) -> None:
        """`written`: ciphertexts pool.db holds. With none, a missing secret is created; with some, the
        secret must exist and decrypt one of them (one damaged row is not a wrong secret)."""
        path = data_dir / SECRET_FILE
        master = _read(path)
        if master is None:
            if written:
                raise _missing(path)
            master = _create(path)
        self._aead = AESGCM(self._derive(master, b"key-encryption"))
        self._hash_key = self._derive(master, b"key-hash")
        self.cookie_key = self._derive(master, b"session-cookie")
        if written and not any(self._opens(blob) for blob in written):
            raise _mismatch(path)
        os.chmod(path, 0o600)

    @staticmethod
    def _derive(master: bytes, purpose: bytes) -> bytes:
        return hashlib.blake2b(purpose, key=master, digest_size=32).digest()

    def _opens(self, blob: bytes) -> bool:
        try:
            self.decrypt(blob)
        except Exception:  # a wrong secret, or a damaged row: either way not opened
            return False
        return True

    def encrypt(self, secret: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, secret.encode(), None)

    def decrypt(self, blob: bytes) -> str:
        return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], None).decode()

    def fingerprint(self, secret: str) -> str:
        """A keyed hash: equal keys collide, yet a guessed key can't be confirmed without the secret."""
        return hmac.new(self._hash_key, secret.encode(), hashlib.sha256).hexdigest()
