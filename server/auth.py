"""Bearer tokens scoped to participants, stored hashed.

A tokens file is JSON:

    {"tokens": [
        {"name": "kiosk-3", "sha256": "<hex of sha256(token)>",
         "stream": ["p001", "p002"], "read": []},
        {"name": "clinic-dashboard", "sha256": "...", "stream": [], "read": ["*"]}
    ]}

`stream` lists the participants whose speech the token may send, `read`
those whose scores it may read; "*" means every participant. Only hashes are
kept, so a leaked file does not leak tokens. `moodstream token create` adds
entries and prints the token once.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc

WILDCARD = "*"


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    stream: frozenset[str] = field(default_factory=frozenset)
    read: frozenset[str] = field(default_factory=frozenset)

    def may_stream(self, participant_id: str) -> bool:
        return WILDCARD in self.stream or participant_id in self.stream

    def may_read(self, participant_id: str) -> bool:
        return WILDCARD in self.read or participant_id in self.read


ANONYMOUS_ADMIN = Principal("anonymous (authentication disabled)", frozenset({WILDCARD}), frozenset({WILDCARD}))


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Principal."""

    def __init__(self, principals_by_hash: dict[str, Principal] | None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.principals_by_hash = principals_by_hash or {}

    @classmethod
    def disabled(cls) -> "TokenAuthenticator":
        return cls(None, enabled=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "TokenAuthenticator":
        return cls(load_tokens(path))

    def authenticate(self, metadata) -> Principal:
        if not self.enabled:
            return ANONYMOUS_ADMIN
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            "missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'")
        principal = self.principals_by_hash.get(hash_token(token.strip()))
        if principal is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        return principal


def load_tokens(path: str | Path) -> dict[str, Principal]:
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"tokens file {path} does not exist: create it with `moodstream token create`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"tokens file {path} is not valid JSON: {error}") from error
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"tokens file {path} must hold {{\"tokens\": [...]}}")
    principals = {}
    for index, entry in enumerate(entries):
        try:
            digest = entry["sha256"]
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("sha256 must be 64 lowercase hex digits")
            principals[digest] = Principal(str(entry.get("name", f"token-{index}")),
                                           frozenset(map(str, entry.get("stream", []))),
                                           frozenset(map(str, entry.get("read", []))))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"tokens file {path}: entry {index} is invalid ({error})") from error
    return principals


def create_token(path: str | Path, name: str, stream: list[str], read: list[str]) -> str:
    """Append a new token's hash to the tokens file (created if missing); return the token itself."""
    path = Path(path)
    document = {"tokens": []}
    if path.exists():
        load_tokens(path)  # refuse to extend a broken file
        document = json.loads(path.read_text())
    token = secrets.token_urlsafe(32)
    while token.startswith("-"):  # a token must pass as a command-line value (`--token TOKEN`)
        token = secrets.token_urlsafe(32)
    document["tokens"].append({"name": name, "sha256": hash_token(token), "stream": stream, "read": read})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(document, handle, indent=2)
        temporary = handle.name
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return token
