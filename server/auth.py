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
entries and prints the token once; `moodstream token revoke` removes them.
With `--record-page` it also adds an entry under "enrolments": a single-use
code sealing the token (server/enrolment.py), which no longer redeems once
the token is revoked. A file without "enrolments" (older ones) loads as before.

A running server reloads the file when it changes (checked every
RELOAD_SECONDS), so a token created or revoked takes effect on every replica
that reads the file without a restart; calls still open with a revoked (or
re-scoped) token are ended UNAUTHENTICATED by the service.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from moodstream.ids import ID_RULE, is_id
from moodstream.server.enrolment import KEEP_EXPIRED_SECONDS, Enrolment, new_code, parse_enrolments, seal

log = logging.getLogger("moodstream.server")

WILDCARD = "*"
RELOAD_SECONDS = 1.0  # how often a server looks for a changed tokens file
# The Screening methods a caller may use without a bearer token; every other method authenticates
# first. Enrol is how a device without a token gets one: its enrolment code is the credential.
UNAUTHENTICATED_METHODS = frozenset({"Enrol"})


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
    digest: str = ""  # sha256 of the token; "" when authentication is off

    def may_stream(self, participant_id: str) -> bool:
        return WILDCARD in self.stream or participant_id in self.stream

    def may_read(self, participant_id: str) -> bool:
        return WILDCARD in self.read or participant_id in self.read


ANONYMOUS_ADMIN = Principal("anonymous (authentication disabled)", frozenset({WILDCARD}), frozenset({WILDCARD}))


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Principal."""

    def __init__(self, principals_by_hash: dict[str, Principal] | None, enabled: bool = True,
                 path: Path | None = None, enrolments: dict[str, Enrolment] | None = None) -> None:
        self.enabled = enabled
        self.principals_by_hash = principals_by_hash or {}
        self.enrolments = enrolments or {}  # by sha256 of the code
        self.path = path
        self._signature = _file_signature(path) if path else None

    @classmethod
    def disabled(cls) -> "TokenAuthenticator":
        return cls(None, enabled=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "TokenAuthenticator":
        path = Path(path)
        signature = _file_signature(path)
        principals, enrolments = load_tokens_and_enrolments(path)
        authenticator = cls(principals, path=path, enrolments=enrolments)
        authenticator._signature = signature
        return authenticator

    def reload_if_changed(self) -> bool:
        """Re-read the tokens file if it changed since it was read; True when the tokens changed.

        A file that cannot be read or parsed keeps the tokens read before
        (and is logged), so a half-edited file never locks everyone out.
        """
        if self.path is None:
            return False
        signature = _file_signature(self.path)
        if signature == self._signature:
            return False
        try:
            principals, enrolments = load_tokens_and_enrolments(self.path)
        except ValueError as error:
            log.error("tokens file changed but is unusable; keeping the %d tokens read before: %s",
                      len(self.principals_by_hash), error)
            self._signature = signature
            return False
        self._signature = signature
        changed = principals != self.principals_by_hash
        self.principals_by_hash = principals
        self.enrolments = enrolments
        if changed:
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(principals))
        return changed

    def is_current(self, principal: Principal) -> bool:
        """False once the principal's token was revoked or its scope changed."""
        return not self.enabled or self.principals_by_hash.get(principal.digest) == principal

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
    return load_tokens_and_enrolments(path)[0]


def load_tokens_and_enrolments(path: str | Path) -> tuple[dict[str, Principal], dict[str, Enrolment]]:
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
                                           frozenset(map(str, entry.get("read", []))), digest)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"tokens file {path}: entry {index} is invalid ({error})") from error
    return principals, parse_enrolments(document, path)


def _file_signature(path: Path) -> tuple | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def check_scope(option: str, participants: list[str]) -> None:
    for participant in participants:
        if participant != WILDCARD and not is_id(participant):
            raise ValueError(f"{option} {participant[:80]!r} is not a participant id ({ID_RULE}) or {WILDCARD}")


@contextlib.contextmanager
def _locked(path: Path):
    """Serialises changes to one tokens file (two admins adding tokens at once lose neither)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_document(path: Path) -> dict:
    if not path.exists():
        return {"tokens": []}
    load_tokens(path)  # refuse to change a broken file
    return json.loads(path.read_text())


def _write_document(path: Path, document: dict) -> None:
    # Write then rename: a server reloading the file never reads half of it.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(document, handle, indent=2)
        temporary = handle.name
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def create_token(path: str | Path, name: str, stream: list[str], read: list[str]) -> str:
    """Append a new token's hash to the tokens file (created if missing); return the token itself."""
    path = Path(path)
    if not name.strip():
        raise ValueError("--name must not be empty")
    check_scope("--stream", stream)
    check_scope("--read", read)
    with _locked(path):
        document = _read_document(path)
        if any(entry.get("name") == name for entry in document["tokens"]):
            raise ValueError(f"a token named {name!r} is already in {path}: pick another --name, or revoke "
                             f"it first with `moodstream token revoke --tokens {path} {name}`")
        token = secrets.token_urlsafe(32)
        while token.startswith("-"):  # a token must pass as a command-line value (`--token TOKEN`)
            token = secrets.token_urlsafe(32)
        document["tokens"].append({"name": name, "sha256": hash_token(token), "stream": stream, "read": read})
        _write_document(path, document)
    return token


def add_enrolment(path: str | Path, name: str, token: str, participant: str, seconds: float,
                  now: float | None = None) -> tuple[str, float]:
    """Add a single-use enrolment code for the token named `name` (which must be `token`, in the file);
    returns the code and when it expires (Unix seconds)."""
    path = Path(path)
    if not seconds > 0:
        raise ValueError("an enrolment code must live more than 0 minutes")
    expires = (time.time() if now is None else now) + seconds
    with _locked(path):
        document = _read_document(path)
        entry = next((entry for entry in document["tokens"] if entry.get("name") == name), None)
        if entry is None or entry["sha256"] != hash_token(token):
            raise ValueError(f"no token named {name!r} with that value in {path}: an enrolment code must open "
                             "a token the server accepts")
        if participant not in entry.get("stream", []):
            raise ValueError(f"token {name!r} may not stream for {participant!r}: the code would enrol a device "
                             "that cannot record")
        code = new_code()
        enrolment = seal(code, token, participant, name, expires)
        _write_document(path, {**document, "enrolments": [*_enrolments_kept(document), enrolment.to_entry()]})
    return code, expires


def _enrolments_kept(document: dict) -> list[dict]:
    # Long-expired codes leave the file with its next change. A revoked token's codes stay until then, so
    # the server can say that their token was revoked (the token they seal no longer opens anything).
    horizon = time.time() - KEEP_EXPIRED_SECONDS
    return [entry for entry in document.get("enrolments", []) if entry.get("expires_unix", 0) >= horizon]


def revoke_token(path: str | Path, name: str) -> int:
    """Remove the token(s) named `name` from the tokens file; returns how many were removed. Their
    enrolment codes can no longer be redeemed: the server hands out only tokens still in the file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"tokens file {path} does not exist")
    with _locked(path):
        document = _read_document(path)
        kept = [entry for entry in document["tokens"] if entry.get("name") != name]
        removed = len(document["tokens"]) - len(kept)
        if not removed:
            names = ", ".join(sorted(str(entry.get("name")) for entry in document["tokens"])) or "none"
            raise ValueError(f"no token named {name!r} in {path} (tokens: {names})")
        document = {**document, "tokens": kept}
        if "enrolments" in document:
            document["enrolments"] = _enrolments_kept(document)
        _write_document(path, document)
    return removed


def list_tokens(path: str | Path) -> list[Principal]:
    """The tokens in the file (names and scopes; the file holds no token itself)."""
    return sorted(load_tokens(path).values(), key=lambda principal: principal.name)
