"""Where books live between their pages: `RedisStore` (shared by every replica, `PICTUREBOOK_REDIS_URL`) or
`MemoryStore` (the embedded default: this front process only, for one replica). Both keep the same record and
answer the same calls, so the routes and the job that draws a book do not know which one they use.

A book is its record (status, pages done and total, the replica drawing it, its failure, what was asked), the job a
worker reads (the request with its seeds fixed and its pictures checked at submit), its finished pages (each one's
PNG and its meta: seed, batch size, timings) and its events (one per finished page, then one at the end, numbered
1, 2, … so that a client resumes after the last one it saw). A page is checkpointed in one step with its event, and
only when it is the next page of a book still drawing: two workers drawing the same page (a replica that was taken
for dead) store it once, and a canceled book takes no further page.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

FINAL = frozenset({"completed", "failed", "canceled"})
STATUSES = ("queued", "drawing", *sorted(FINAL))


class StoreUnavailable(Exception):
    """The book store (Redis) did not answer: a 503 at submit, retried by a book job."""


@dataclass
class Event:
    id: int  # 1 for the first page, …; the end event follows the last page
    kind: str  # "page" or "end"
    data: dict


@dataclass
class Record:
    """A book's state, no pictures."""

    status: str
    done: int
    total: int
    created: float
    info: dict  # what was asked, fixed at submit: title, texts, seeds
    replica: str = ""
    failure: dict | None = None
    finished: float = 0.0  # when it reached its final status


# -- the embedded store ----------------------------------------------------------------------------------------------


@dataclass
class _Book:
    record: Record
    job: str
    expires: float
    pages: list[dict] = field(default_factory=list)
    pngs: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    cast: list[tuple[dict, bytes]] = field(default_factory=list)  # the portraits drawn for it: (meta, PNG)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryStore:
    """Books in this process (`PICTUREBOOK_REDIS_URL` unset). At most `capacity` unfinished at once."""

    kind = "memory"

    def __init__(self, capacity: int, retention_s: float):
        self.capacity = capacity
        self.retention_s = retention_s
        self._books: dict[str, _Book] = {}

    def _get(self, book_id: str) -> _Book | None:
        now = time.time()
        for key in [k for k, b in self._books.items() if b.expires < now]:
            del self._books[key]
        return self._books.get(book_id)

    def _touch(self, book: _Book) -> None:
        book.expires = time.time() + self.retention_s
        book.changed.set()
        book.changed = asyncio.Event()

    async def ping(self) -> None:
        return None

    async def has_room(self) -> bool:
        """Whether a book submitted now would find a slot (`reserve` decides)."""
        self._get("")  # drop expired books
        return sum(1 for b in self._books.values() if b.record.status not in FINAL) < self.capacity

    async def reserve(self, book_id: str, record: Record, job: str) -> bool:
        if not await self.has_room():
            return False
        self._books[book_id] = _Book(record, job, time.time() + self.retention_s)
        return True

    async def record(self, book_id: str) -> Record | None:
        book = self._get(book_id)
        return None if book is None else book.record

    async def job(self, book_id: str) -> str | None:
        book = self._get(book_id)
        return None if book is None else book.job

    async def pages(self, book_id: str, since: int = 0) -> list[dict]:
        book = self._get(book_id)
        return [] if book is None else book.pages[since:]

    async def png(self, book_id: str, index: int) -> bytes | None:
        book = self._get(book_id)
        return book.pngs[index] if book is not None and 0 <= index < len(book.pngs) else None

    async def pngs(self, book_id: str) -> list[bytes]:
        book = self._get(book_id)
        return [] if book is None else list(book.pngs)

    async def cast(self, book_id: str) -> list[tuple[dict, bytes]]:
        """The portraits drawn for the book's described members: (meta with its `index` in the cast, PNG)."""
        book = self._get(book_id)
        return [] if book is None else list(book.cast)

    async def keep_cast(self, book_id: str, portraits: list[tuple[dict, bytes]]) -> bool:
        """Checkpoint the portraits (before the first page): False when the book is no longer drawing."""
        book = self._get(book_id)
        if book is None or book.record.status != "drawing":
            return False
        book.cast = sorted([*book.cast, *portraits], key=lambda p: p[0]["index"])
        self._touch(book)
        return True

    async def claim(self, book_id: str, replica: str) -> bool:
        book = self._get(book_id)
        if book is None or book.record.status in FINAL:
            return False
        book.record.status, book.record.replica = "drawing", replica
        self._touch(book)
        return True

    async def checkpoint(self, book_id: str, index: int, png: bytes, page: dict) -> bool:
        book = self._get(book_id)
        if book is None or book.record.status != "drawing" or book.record.done != index:
            return False
        book.pages.append(page)
        book.pngs.append(png)
        book.record.done = index + 1
        book.events.append(Event(index + 1, "page", page))
        self._touch(book)
        return True

    async def finish(self, book_id: str, status: str, failure: dict | None) -> bool:
        book = self._get(book_id)
        if book is None or book.record.status in FINAL:
            return False
        book.record.status, book.record.failure, book.record.finished = status, failure, time.time()
        end = {"status": status, "pages_done": book.record.done, "failure": failure}
        book.events.append(Event(book.record.done + 1, "end", end))
        self._touch(book)
        return True

    async def events(self, book_id: str, after: int, timeout_s: float) -> list[Event] | None:
        """Events numbered after `after`, waiting up to `timeout_s` for one; None when the book is gone."""
        book = self._get(book_id)
        if book is None:
            return None
        if not any(e.id > after for e in book.events):
            try:
                await asyncio.wait_for(book.changed.wait(), timeout_s)
            except TimeoutError:
                pass
        return [e for e in book.events if e.id > after]

    async def close(self) -> None:
        return None


# -- Redis -----------------------------------------------------------------------------------------------------------

PREFIX = "picturebook:"
UNFINISHED = PREFIX + "unfinished"  # sorted set: book id -> submit time
REPLICAS = PREFIX + "replicas"  # sorted set: replica -> when it is taken for gone
SLOTS = PREFIX + "slots"  # hash: replica -> its PICTUREBOOK_MAX_BOOKS

# Whether every slot is taken: the live replicas' slots against the books unfinished (both pruned first).
# KEYS: unfinished, replicas, slots. ARGV: now, ttl (a book unfinished for longer than the retention is gone).
_FULL = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local capacity = 0
for _, replica in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  capacity = capacity + tonumber(redis.call('HGET', KEYS[3], replica) or '0')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
local full = redis.call('ZCARD', KEYS[1]) >= capacity
"""
_HAS_ROOM = (
    _FULL
    + """
if full then return 0 end
return 1
"""
)
# KEYS: unfinished, replicas, slots, record, job. ARGV: now, ttl, id, record fields as JSON, job.
_RESERVE = (
    _FULL
    + """
if full then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
local fields = cjson.decode(ARGV[4])
for name, value in pairs(fields) do redis.call('HSET', KEYS[4], name, value) end
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[2])
return 1
"""
)
# KEYS: record. ARGV: replica.
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'drawing' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'drawing', 'replica', ARGV[1])
return 1
"""
# KEYS: record, job, pages, pngs, events, cast. ARGV: index, page as JSON, png, ttl.
_CHECKPOINT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'drawing' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'done')) ~= tonumber(ARGV[1]) then return 0 end
local done = tonumber(ARGV[1]) + 1
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[1], 'done', done)
redis.call('XADD', KEYS[5], done .. '-0', 'kind', 'page', 'data', ARGV[2])
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""
# KEYS: record, job, pages, pngs, events, cast, unfinished.
# ARGV: status, failure as JSON ('null' for none), ttl, id, now.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'failure', ARGV[2], 'finished', ARGV[5])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
local event = '{"status": "' .. ARGV[1] .. '", "pages_done": ' .. done .. ', "failure": ' .. ARGV[2] .. '}'
redis.call('XADD', KEYS[5], (done + 1) .. '-0', 'kind', 'end', 'data', event)
redis.call('ZREM', KEYS[7], ARGV[4])
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""

# KEYS: record, job, pages, pngs, events, cast. ARGV: ttl, then index, meta as JSON, png for each portrait.
_KEEP_CAST = """
if redis.call('HGET', KEYS[1], 'status') ~= 'drawing' then return 0 end
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[6], ARGV[i] .. ':meta', ARGV[i + 1], ARGV[i] .. ':png', ARGV[i + 2])
end
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return 1
"""


def _keys(book_id: str) -> list[str]:
    base = f"{PREFIX}book:{book_id}"
    return [base, base + ":job", base + ":pages", base + ":pngs", base + ":events", base + ":cast"]


class RedisStore:
    """Books in Redis, shared by every replica; each key of a book expires `retention_s` after its last write."""

    kind = "redis"

    def __init__(self, url: str, retention_s: int, timeout_s: float = 5.0):
        import redis.asyncio as redis
        from redis.exceptions import OutOfMemoryError

        # Unreachable, or full (`maxmemory` with `noeviction` refuses writes): a 503 at submit, retried by a job.
        self.errors = (redis.ConnectionError, redis.TimeoutError, OutOfMemoryError, OSError)
        self.redis = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.retention_s = int(retention_s)
        self._reserve = self.redis.register_script(_RESERVE)
        self._has_room = self.redis.register_script(_HAS_ROOM)
        self._claim = self.redis.register_script(_CLAIM)
        self._checkpoint = self.redis.register_script(_CHECKPOINT)
        self._finish = self.redis.register_script(_FINISH)
        self._keep_cast = self.redis.register_script(_KEEP_CAST)

    async def _call(self, operation) -> Any:
        try:
            return await operation
        except self.errors as error:
            raise StoreUnavailable(f"Redis did not answer: {error}") from error

    async def ping(self) -> None:
        await self._call(self.redis.ping())

    async def announce(self, replica: str, slots: int, alive_s: float) -> None:
        """This replica draws up to `slots` books; counted in the capacity for the next `alive_s` seconds."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(REPLICAS, {replica: time.time() + alive_s}).hset(SLOTS, replica, slots)
            await self._call(pipe.execute())

    async def unfinished(self) -> list[str]:
        """The books queued or drawing, in any replica."""
        return [book_id.decode() for book_id in await self._call(self.redis.zrange(UNFINISHED, 0, -1))]

    async def withdraw(self, replica: str) -> None:
        await self._call(self.redis.zrem(REPLICAS, replica))

    async def reserve(self, book_id: str, record: Record, job: str) -> bool:
        fields = {
            "status": record.status,
            "done": record.done,
            "total": record.total,
            "created": record.created,
            "info": json.dumps(record.info),
            "replica": "",
            "failure": "null",
            "finished": 0,
        }
        keys = [UNFINISHED, REPLICAS, SLOTS, *_keys(book_id)[:2]]
        args = [time.time(), self.retention_s, book_id, json.dumps(fields), job]
        return bool(await self._call(self._reserve(keys=keys, args=args)))

    async def has_room(self) -> bool:
        """Whether a book submitted now would find a slot (`reserve` decides, atomically)."""
        keys, args = [UNFINISHED, REPLICAS, SLOTS], [time.time(), self.retention_s]
        return bool(await self._call(self._has_room(keys=keys, args=args)))

    async def record(self, book_id: str) -> Record | None:
        fields = await self._call(self.redis.hgetall(_keys(book_id)[0]))
        if not fields:
            return None
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        return Record(
            status=fields["status"],
            done=int(fields["done"]),
            total=int(fields["total"]),
            created=float(fields["created"]),
            info=json.loads(fields["info"]),
            replica=fields["replica"],
            failure=json.loads(fields["failure"]),
            finished=float(fields["finished"]),
        )

    async def job(self, book_id: str) -> str | None:
        job = await self._call(self.redis.get(_keys(book_id)[1]))
        return None if job is None else job.decode()

    async def pages(self, book_id: str, since: int = 0) -> list[dict]:
        return [json.loads(p) for p in await self._call(self.redis.lrange(_keys(book_id)[2], since, -1))]

    async def png(self, book_id: str, index: int) -> bytes | None:
        return await self._call(self.redis.hget(_keys(book_id)[3], str(index)))

    async def pngs(self, book_id: str) -> list[bytes]:
        stored = await self._call(self.redis.hgetall(_keys(book_id)[3]))
        return [stored[str(k).encode()] for k in range(len(stored))]

    async def cast(self, book_id: str) -> list[tuple[dict, bytes]]:
        stored = await self._call(self.redis.hgetall(_keys(book_id)[5]))
        metas = [json.loads(v) for k, v in stored.items() if k.endswith(b":meta")]
        return [(meta, stored[f"{meta['index']}:png".encode()]) for meta in sorted(metas, key=lambda m: m["index"])]

    async def keep_cast(self, book_id: str, portraits: list[tuple[dict, bytes]]) -> bool:
        args = [self.retention_s]
        for meta, png in portraits:
            args += [meta["index"], json.dumps(meta), png]
        return bool(await self._call(self._keep_cast(keys=_keys(book_id), args=args)))

    async def claim(self, book_id: str, replica: str) -> bool:
        return bool(await self._call(self._claim(keys=_keys(book_id)[:1], args=[replica])))

    async def checkpoint(self, book_id: str, index: int, png: bytes, page: dict) -> bool:
        args = [index, json.dumps(page), png, self.retention_s]
        return bool(await self._call(self._checkpoint(keys=_keys(book_id), args=args)))

    async def finish(self, book_id: str, status: str, failure: dict | None) -> bool:
        args = [status, json.dumps(failure), self.retention_s, book_id, time.time()]
        return bool(await self._call(self._finish(keys=[*_keys(book_id), UNFINISHED], args=args)))

    async def events(self, book_id: str, after: int, timeout_s: float) -> list[Event] | None:
        key = _keys(book_id)[4]
        block_ms = max(1, int(timeout_s * 1000))
        answer = await self._call(self.redis.xread({key: f"{after}-0"}, block=block_ms))
        if not answer:
            exists = await self._call(self.redis.exists(_keys(book_id)[0]))
            return [] if exists else None
        [(_, entries)] = answer
        return [
            Event(int(entry_id.decode().split("-")[0]), fields[b"kind"].decode(), json.loads(fields[b"data"]))
            for entry_id, fields in entries
        ]

    async def memory_bytes(self, book_id: str) -> int:
        """What this book's keys take in Redis (`MEMORY USAGE`, every element sampled)."""
        total = 0
        for key in _keys(book_id):
            total += await self._call(self.redis.memory_usage(key, samples=0)) or 0
        return total

    async def close(self) -> None:
        await self.redis.aclose()
