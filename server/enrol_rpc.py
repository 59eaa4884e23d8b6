"""The Enrol RPC: a device trades a single-use enrolment code (server/enrolment.py) for its stream token.

It is the one Screening method without a bearer token (auth.UNAUTHENTICATED_METHODS): the code is the
credential. An unknown code is answered from memory, so guessing codes never reaches Redis; only a code
in the tokens file, not expired and whose token is still valid, is marked used there (SET NX), so it
is redeemed once across every replica that shares the store. The used mark holds the digest of the
device's claim: the same device resending the call after a lost answer gets the token again, any other
caller gets FAILED_PRECONDITION.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from datetime import datetime, timezone

import grpc

from moodstream.server.auth import hash_token
from moodstream.server.enrolment import CODE_PATTERN, WrongCode, code_digest, unseal
from moodstream.server.metrics import ENROLMENTS
from moodstream.server.rpc_errors import StreamAbort, redis_call
from moodstream.server.store_keys import enrolment_used_key
from moodstream.v1 import moodstream_pb2 as pb

log = logging.getLogger("moodstream.server")

# The used mark outlives the code by this much, so a replica whose clock is behind still finds it.
USED_MARK_MARGIN_SECONDS = 3600
ASK_AGAIN = "ask your clinician for a new link"


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _claim_digest(claim: str) -> str:
    # No claim: a value nobody knows, so no retry can match it.
    return hashlib.sha256((claim or secrets.token_hex(16)).encode("utf-8")).hexdigest()


class EnrolmentRPC:
    """Mixin of the Screening servicer; needs its `authenticator` and `store` (for the Redis client)."""

    async def Enrol(self, request, context):
        try:
            answer = await self._enrol(request, context)
        except StreamAbort as error:
            ENROLMENTS.labels(error.code.name.lower()).inc()
            log.info("enrolment refused: %s %s", error.code.name, error)
            await context.abort(error.code, str(error))
        ENROLMENTS.labels("enrolled").inc()
        return answer

    async def _enrol(self, request, context) -> pb.EnrolResponse:
        code = request.code.strip()
        if not CODE_PATTERN.fullmatch(code):
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                              "code is not an enrolment code (22 characters of A-Z a-z 0-9 _ -): open the whole "
                              f"link, or {ASK_AGAIN}")
        digest = code_digest(code)
        enrolment = self.authenticator.enrolments.get(digest)
        if enrolment is None:
            raise StreamAbort(grpc.StatusCode.NOT_FOUND, f"this enrolment code is not known to the server; {ASK_AGAIN}")
        now = time.time()
        if now >= enrolment.expires_unix:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this enrolment code expired at {_when(enrolment.expires_unix)}; {ASK_AGAIN}")
        try:
            token = unseal(enrolment, code)
        except WrongCode as error:
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, f"{error}; {ASK_AGAIN}") from None
        principal = self.authenticator.principals_by_hash.get(hash_token(token))
        if principal is None or not principal.may_stream(enrolment.participant):
            raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                              f"the token this code enrols ({enrolment.token_name!r}) was revoked; {ASK_AGAIN}")
        claim = _claim_digest(request.device_claim)
        key = enrolment_used_key(digest)
        ttl = int(enrolment.expires_unix - now) + USED_MARK_MARGIN_SECONDS
        client = self.store.client
        if not await redis_call(lambda: client.set(key, claim, nx=True, ex=ttl)):
            holder = await redis_call(lambda: client.get(key))
            if holder is None or (holder.decode() if isinstance(holder, bytes) else holder) != claim:
                raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"this enrolment code was already used, by another device or an earlier "
                                  f"visit; a code enrols one device only, so {ASK_AGAIN}")
        log.info("enrolled a device for participant %s with token %r", enrolment.participant, enrolment.token_name)
        return pb.EnrolResponse(participant_id=enrolment.participant, token=token, token_name=enrolment.token_name)
