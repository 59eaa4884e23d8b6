"""What Redis holds about sessions whatever their model version, and forgetting a participant.

A session id's owner and the model version it is pinned to are found from the session id alone, the stored
model versions from one set, and a participant's keys of every version from their hash tag (see
moodstream.server.store_keys), so none of these needs a model version: commands run by hand (forget,
export) use SessionDirectory directly, and each SessionStore through its `directory`.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from moodstream.ids import ID_PATTERN
from moodstream.server.redis_connection import AnyRedis
from moodstream.server.store_keys import (DIRECTORY_PREFIX, VERSIONS_KEY, owner_key, participant_prefix,
                                          session_id_in_participant_key, session_model_key)
from moodstream.server.store_scripts import FORGET_OWNER_SCRIPT
from moodstream.server.store_values import as_text, check_pattern

__all__ = ["SessionDirectory"]

DELETE_BATCH = 500


class SessionDirectory:
    """Sessions of every model version in Redis (single server or cluster).

    Args:
        client: from connect(); the caller closes it.
    """

    def __init__(self, client: AnyRedis) -> None:
        self.client = client
        self._forget_owner = client.register_script(FORGET_OWNER_SCRIPT)

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    async def session_owner(self, session_id: str) -> str | None:
        check_pattern("session_id", session_id, ID_PATTERN)
        owner = await self.client.get(owner_key(session_id))
        return owner.decode() if owner is not None else None

    async def session_model_version(self, session_id: str) -> str | None:
        """The model version a session started under (None: unknown, or started before versions were recorded)."""
        check_pattern("session_id", session_id, ID_PATTERN)
        version = await self.client.get(session_model_key(session_id))
        return as_text(version) if version is not None else None

    async def stored_model_versions(self, scan: bool = False) -> set[str]:
        """Every model version that has stored a session in this Redis.

        scan: also find versions of sessions stored before versions were recorded, by SCANning for their
        participant directories (every key is visited: for offline work such as an export).
        """
        versions = {as_text(member) for member in await self.client.smembers(VERSIONS_KEY)}
        if scan:
            versions |= {key[len(DIRECTORY_PREFIX):] for key in await self._scan(DIRECTORY_PREFIX + "*")}
        return versions

    async def forget_participant(self, participant_id: str) -> int:
        """Delete every key of a participant, all model versions; returns how many.

        Scans every master (in a cluster the hash tag keeps them on one slot,
        but a slot can be mid-migration between two masters), then deletes
        the owner keys of the sessions found, if they still name this
        participant.
        """
        check_pattern("participant_id", participant_id, ID_PATTERN)
        prefix = participant_prefix(participant_id)
        found = await self._scan(prefix + "*")
        session_ids = {session_id_in_participant_key(key[len(prefix):]) for key in found} - {None}

        deleted = 0
        for batch in _batches(sorted(found), DELETE_BATCH):
            deleted += await self._delete_same_slot(batch)
        for session_id in sorted(session_ids):
            owned = int(await self._forget_owner([owner_key(session_id)], [participant_id]))
            if owned:
                deleted += owned + int(await self.client.delete(session_model_key(session_id)))
        for directory in sorted(await self._scan(DIRECTORY_PREFIX + "*")):
            await self.client.zrem(directory, participant_id)
        return deleted

    async def _scan(self, pattern: str) -> set[str]:
        keys: set[str] = set()  # SCAN may return a key more than once
        if not self.is_cluster:
            async for key in self.client.scan_iter(match=pattern, count=1000):
                keys.add(as_text(key))
            return keys
        for node in self.client.get_primaries():
            cursor = 0
            while True:
                cursors, batch = await self.client.scan(cursor, match=pattern, count=1000, target_nodes=node)
                keys.update(as_text(key) for key in batch)
                cursor = cursors[node.name]
                if cursor == 0:
                    break
        return keys

    async def _delete_same_slot(self, keys: list[str]) -> int:
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key.encode()), []).append(key)
        deleted = 0
        for slot_keys in by_slot.values():
            deleted += int(await self.client.delete(*slot_keys))
        return deleted


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
