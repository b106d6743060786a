"""The ledger's Ed25519 signing key on disk: a base64 seed of 32 bytes in a file of mode 0600."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey


def write_signing_key(path: Path, key: SigningKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key that signed blocks; a lost key makes the chain unverifiable.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(base64.b64encode(bytes(key)).decode() + "\n")
        # On disk before anything is signed with it: a crash must not leave an empty key file.
        handle.flush()
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_signing_key(path: Path) -> SigningKey:
    seed = base64.b64decode(path.read_text().strip(), validate=True)
    if len(seed) != 32:
        raise ValueError(f"{path} must hold the base64 of a 32-byte Ed25519 seed")
    return SigningKey(seed)


def load_or_create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """The key at ``path``, or a new one written there. Returns (key, created)."""
    if path.exists():
        return read_signing_key(path), False
    key = SigningKey.generate()
    write_signing_key(path, key)
    return key, True


def public_key_text(key: VerifyKey) -> str:
    return base64.b64encode(bytes(key)).decode()


def verify_key_from_text(text: str) -> VerifyKey:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes (base64)")
    return VerifyKey(raw)
