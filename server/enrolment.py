"""Enrolment codes: single-use, short-lived codes that a device trades for its participant's stream token.

The record page link carries a code instead of the token, because a browser keeps every link it opened
in its history database: whoever picks up the phone later must find nothing there they can record with.

An enrolment sits in the tokens file beside its token (server/auth.py), under "enrolments":

    {"sha256": "<hex of sha256(code)>", "participant": "p001", "token": "phone-p001",
     "expires_unix": 1760000000.0, "salt": "<hex>", "nonce": "<hex>", "sealed": "<hex>"}

`sealed` is the token under AES-256-GCM with a key derived from the code (HKDF-SHA256 over the code's
128 random bits, with the entry's own salt), authenticated together with the participant and the
token's name. So the server can hand the token out only to whoever holds the code, and the file, like
the token hashes beside it, leaks no token. Single use is kept in Redis (server/enrol_rpc.py), so it
holds across replicas that read the same file.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass

CODE_BYTES = 16  # 128 random bits: guessing a code is as hopeless as guessing a key
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # CODE_BYTES in unpadded URL-safe base64
# A link sent by message is often opened hours after a visit, so a day; a clinic that shows the QR code
# at the visit can pass less. A code used by someone else shows on the participant's phone as "already
# used", so a stolen code is noticed, and revoking the token ends it.
DEFAULT_ENROL_MINUTES = 24 * 60
# An expired entry stays in the file this long, so its code is still answered "expired" rather than
# "unknown"; the next `token create` or `token revoke` drops it after that.
KEEP_EXPIRED_SECONDS = 30 * 86400
_KEY_INFO = b"moodstream enrolment v1: token key"
_NONCE_BYTES = 12
_SALT_BYTES = 16


@dataclass(frozen=True)
class Enrolment:
    digest: str          # sha256(code), hex: how the server finds the entry without holding the code
    participant: str
    token_name: str
    expires_unix: float
    salt: bytes
    nonce: bytes
    sealed: bytes

    def to_entry(self) -> dict:
        return {"sha256": self.digest, "participant": self.participant, "token": self.token_name,
                "expires_unix": self.expires_unix, "salt": self.salt.hex(), "nonce": self.nonce.hex(),
                "sealed": self.sealed.hex()}


class WrongCode(Exception):
    """The entry does not open with this code (the file was edited, or the entry is not the code's)."""


def new_code() -> str:
    code = secrets.token_urlsafe(CODE_BYTES)
    while code.startswith("-"):  # a code must pass as a command-line value too
        code = secrets.token_urlsafe(CODE_BYTES)
    return code


def code_digest(code: str) -> str:
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def _key(code: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_KEY_INFO).derive(raw)


def _bound_data(participant: str, token_name: str) -> bytes:
    # Sealed with the token: an entry whose participant or name was changed in the file does not open.
    return f"{participant}\n{token_name}".encode("utf-8")


def seal(code: str, token: str, participant: str, token_name: str, expires_unix: float) -> Enrolment:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_key(code, salt)).encrypt(nonce, token.encode("utf-8"), _bound_data(participant, token_name))
    return Enrolment(code_digest(code), participant, token_name, float(expires_unix), salt, nonce, sealed)


def unseal(enrolment: Enrolment, code: str) -> str:
    """The token the entry holds; WrongCode if `code` does not open it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        token = AESGCM(_key(code, enrolment.salt)).decrypt(
            enrolment.nonce, enrolment.sealed, _bound_data(enrolment.participant, enrolment.token_name))
    except InvalidTag:
        raise WrongCode("the tokens file's entry for this code does not open with it") from None
    return token.decode("utf-8")


def parse_enrolments(document: dict, path) -> dict[str, Enrolment]:
    """The "enrolments" of a tokens file's JSON, by digest (none in a file that predates them)."""
    entries = document.get("enrolments", [])
    if not isinstance(entries, list):
        raise ValueError(f"tokens file {path}: \"enrolments\" must be a list")
    enrolments = {}
    for index, entry in enumerate(entries):
        try:
            digest = entry["sha256"]
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("sha256 must be 64 lowercase hex digits")
            enrolments[digest] = Enrolment(digest, str(entry["participant"]), str(entry["token"]),
                                           float(entry["expires_unix"]), bytes.fromhex(entry["salt"]),
                                           bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["sealed"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"tokens file {path}: enrolment {index} is invalid ({error})") from error
    return enrolments
