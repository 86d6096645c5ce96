"""Book jobs: submitted by any replica, drawn by a worker in some front replica, at most PICTUREBOOK_MAX_BOOKS at a
time in each, through that replica's PageDrawer (the model service and its batcher, as /generate).

With `PICTUREBOOK_REDIS_URL`: the jobs are SAQ jobs on Redis (docs/DESIGN.md, "Books on Redis", says what SAQ
guarantees and what was read in its source). Each front process runs one SAQ worker with `max_books` dequeuers; a
job's worker beats every third of PICTUREBOOK_BOOK_HEARTBEAT_S; a job whose beat stopped (its replica died) is swept
by another replica's worker, re-queued and continued from its last checkpointed page (serving/books.py draw_book).
Without it (the embedded default): an asyncio task per book in this process, for one replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from pydantic import ValidationError

from pipeline.page import Quality

from . import errors
from .book_store import FINAL, MemoryStore, Record, RedisStore, StoreUnavailable
from .books import BookRequest, check_book, draw_book, fixed_seeds, stored_job
from .content_safety import PromptGate
from .drawing import PageDrawer
from .settings import ServingSettings

log = logging.getLogger(__name__)
QUEUE_NAME = "picturebook-books"
TAKEOVERS = 5  # SAQ attempts of one book: its first and up to four takeovers after a replica died or stopped


class Books:
    """One per front process: the store, the queue, and this replica's worker."""

    def __init__(self, settings: ServingSettings, prompts: PromptGate):
        self.settings = settings
        self.prompts = prompts
        self.redis_url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        self._store: MemoryStore | RedisStore | None = None
        self._queue = None
        self._local: dict[str, asyncio.Task] = {}  # embedded: the task drawing each book
        self._background: list[asyncio.Task] = []
        self.drawer: PageDrawer | None = None

    @property
    def replica(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def store(self) -> MemoryStore | RedisStore:
        """Made on first use, in the process (and event loop) that serves."""
        if self._store is None:
            if self.redis_url is None:
                self._store = MemoryStore(self.settings.max_books, self.settings.book_retention_s)
            else:
                self._store = RedisStore(self.redis_url, self.settings.book_retention_s)
        return self._store

    @property
    def queue(self):
        if self._queue is None and self.redis_url is not None:
            self._queue = _queue(self.redis_url)
        return self._queue

    # -- what the routes call ---------------------------------------------------------------------------------------

    async def submit(self, body: bytes):
        """A book checked and stored as a job: (its id, None), or (None, the error answer): 400 naming the field,
        422 for a refused text, 429 when every slot is taken, 503 when the store is unreachable."""
        try:
            book, pictures = await asyncio.to_thread(check_book, body, self.settings.image_limits)
        except ValidationError as error:
            return None, errors.invalid_fields(error)
        try:  # a full house is told so before the moderation model reads the whole book
            if not await self.store.has_room():
                return None, self._full()
        except StoreUnavailable as error:
            return None, errors.store_unavailable(str(error), self.settings.retry_after_s)
        refused = await self.prompts.refusal(book.texts())
        if refused is not None:
            return None, refused
        book = fixed_seeds(book)
        book_id = uuid.uuid4().hex
        info = {
            "title": book.title,
            "texts": [p.text for p in book.pages],
            "seeds": [p.seed for p in book.pages],
            "quality": book.quality.value,
        }
        record = Record(status="queued", done=0, total=len(book.pages), created=time.time(), info=info)
        job = await asyncio.to_thread(stored_job, book, pictures)
        try:
            if not await self.store.reserve(book_id, record, job):
                return None, self._full()
            await self._enqueue(book_id)
        except StoreUnavailable as error:
            return None, errors.store_unavailable(str(error), self.settings.retry_after_s)
        return book_id, None

    def _full(self):
        where = "in this replica" if self.redis_url is None else "in every replica"
        message = f"every book slot is taken ({where}, {self.settings.max_books} per replica); retry later"
        return errors.too_many(message, self.settings.retry_after_s)

    async def final(self, book_id: str):
        """Make final: a new book from a stored one's request, its seeds as fixed at submit and `quality: final`,
        checked and submitted as `POST /books` would (so it answers what submit answers). LookupError when the book
        is unknown or expired."""
        job = await self.store.job(book_id)
        if job is None:
            raise LookupError(book_id)
        book = BookRequest.model_validate_json(job)
        return await self.submit(book.model_copy(update={"quality": Quality.final}).model_dump_json().encode())

    async def _enqueue(self, book_id: str) -> None:
        if self.redis_url is None:
            task = asyncio.create_task(self._draw_here(book_id))
            self._local[book_id] = task
            return
        try:
            await self._enqueue_job(book_id)
        except self.store.errors as error:
            try:
                await self.store.finish(book_id, "failed", {"index": -1, "kind": "internal", "error": str(error)})
            except StoreUnavailable:
                pass
            raise StoreUnavailable(f"Redis did not take the job: {error}") from error

    async def _enqueue_job(self, book_id: str):
        return await self.queue.enqueue(
            "draw_book",
            key=book_id,
            book_id=book_id,
            timeout=0,  # no limit on a book's time: the heartbeat tells a live job from a dead one
            heartbeat=self.settings.book_heartbeat_s,
            retries=TAKEOVERS,
            ttl=self.settings.book_retention_s,
        )

    async def _reap(self) -> None:
        """Queue again every unfinished book that has no live job. SAQ can lose one: when Redis stalls, every
        heartbeat stops, and after it the sweep aborts the jobs of live workers; the abort of the old attempt can
        then land on the new one (saq/worker.py `abort` against saq/queue/redis.py `sweep`, 0.26.4). The
        checkpoint makes a second attempt harmless, so a book is queued again rather than left drawing forever."""
        for book_id in await self.store.unfinished():
            job = await self.queue.job(book_id)
            if job is not None and job.status in ("new", "queued", "active"):
                continue
            record = await self.store.record(book_id)
            if record is not None and record.status not in FINAL and await self._enqueue_job(book_id):
                log.warning("book %s had no live job (%s): queued again", book_id, job and job.status)

    async def cancel(self, book_id: str) -> Record | None:
        """Cancel a book: no page after the one being drawn (which the model service is told to drop), its slot
        freed. The book as it stands, or None when there is none."""
        if await self.store.finish(book_id, "canceled", None):
            if self.redis_url is None:
                task = self._local.get(book_id)
                if task is not None:
                    task.cancel()
            else:
                try:
                    job = await self.queue.job(book_id)
                    if job is not None and job.status not in ("complete", "failed", "aborted"):
                        await self.queue.abort(job, "canceled")
                except self.store.errors as error:  # the book is canceled all the same: its next page is refused
                    log.warning("could not abort the job of canceled book %s: %r", book_id, error)
        return await self.store.record(book_id)

    async def health(self) -> str:
        """For /readyz: where books are kept, and whether that store answers."""
        if self.redis_url is None:
            return "embedded (one replica)"
        try:
            await asyncio.wait_for(self.store.ping(), 1.0)
        except (StoreUnavailable, TimeoutError) as error:
            return f"unavailable: Redis did not answer ({error or 'timeout'}); /generate still works"
        return "redis"

    # -- this replica's worker ----------------------------------------------------------------------------------------

    async def _draw_here(self, book_id: str) -> None:
        try:
            await draw_book(self.store, book_id, self.drawer, self.replica)
        except Exception:
            log.exception("book %s", book_id)
            await self.store.finish(book_id, "failed", {"index": -1, "kind": "internal", "error": "see the log"})
        finally:
            self._local.pop(book_id, None)

    async def _draw_job(self, ctx: dict, *, book_id: str) -> None:
        """The SAQ job: draw the book, beating while it does."""
        job = ctx["job"]

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.book_heartbeat_s / 3)
                try:
                    await job.update()
                except Exception as error:  # Redis away: draw_book retries its own calls, and fails the book
                    log.warning("book %s: heartbeat not written: %r", book_id, error)

        beating = asyncio.create_task(beat())
        try:
            await draw_book(self.store, book_id, self.drawer, self.replica)
        except Exception as error:  # not SAQ's to retry: a book fails once, with its reason
            log.exception("book %s", book_id)
            failure = {"index": -1, "kind": "internal", "error": f"the book job failed: {error!r}"}
            try:
                await self.store.finish(book_id, "failed", failure)
            except StoreUnavailable:
                pass
        finally:
            beating.cancel()

    async def start(self, drawer: PageDrawer) -> None:
        """Start drawing books here (the front's startup). Never waits on Redis: /generate serves without it."""
        self.drawer = drawer
        if self.redis_url is None:
            return
        from saq import Worker

        class QuietWorker(Worker):
            SIGNALS = []  # BentoML owns this process's signals; it stops the worker at shutdown (stop, below)

        worker = QuietWorker(
            self.queue,
            functions=[("draw_book", self._draw_job)],
            concurrency=self.settings.max_books,
            timers={"sweep": max(1, self.settings.book_heartbeat_s // 2), "abort": 1, "schedule": 1},
            dequeue_timeout=1,
            shutdown_grace_period_s=0,  # at shutdown a book in flight goes back to the queue for another replica
            id=self.replica,
        )
        self._worker = worker
        self._background = [asyncio.create_task(worker.start()), asyncio.create_task(self._announce())]

    async def _announce(self) -> None:
        """Count this replica's slots in the cluster's capacity while it lives; queue again a book that lost its job."""
        every_s = max(1.0, self.settings.book_heartbeat_s / 3)
        beats = 0
        while True:
            try:
                await self.store.announce(self.replica, self.settings.max_books, alive_s=3 * every_s)
                beats += 1
                if beats % 6 == 0:  # every two heartbeats
                    await self._reap()
            except (StoreUnavailable, *self.store.errors) as error:
                log.warning("book store unreachable: %s", error)
            except Exception:
                log.exception("book reaper")
            await asyncio.sleep(every_s)

    async def stop(self) -> None:
        """The front's shutdown: books drawing here go back to the queue (Redis) or are left (embedded)."""
        for task in self._local.values():
            task.cancel()
        if self._background:
            self._background[1].cancel()
            await self._worker.stop()
            self._background[0].cancel()
            try:
                await self.store.withdraw(self.replica)
            except StoreUnavailable:
                pass
        if self._store is not None:
            await self._store.close()


def _queue(url: str):
    """SAQ's Redis queue on a client of its own (no read timeout: it blocks on BLMOVE and pub/sub), which waits out
    an unreachable Redis instead of spinning its dequeuers."""
    import redis.asyncio as redis
    from saq.queue.redis import RedisQueue

    class PatientQueue(RedisQueue):
        async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0):
            try:
                return await super().dequeue(timeout, poll_interval)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                log.warning("book queue: Redis did not answer: %r", error)
                await asyncio.sleep(1.0)
                return None

    client = redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=30)
    return PatientQueue(client, name=QUEUE_NAME)


__all__ = ["FINAL", "Books"]
