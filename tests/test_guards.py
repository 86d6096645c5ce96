"""The ASGI guards' bookkeeping that a live server cannot show directly: bodies being received share a memory
budget, and slow senders, holding a few bytes each, take none of it."""

import asyncio

from serving.guards import JsonBodyOnly

HEADERS = [(b"content-type", b"application/json")]


async def answered_by(guard, chunks: list[bytes], pause_s: float = 0.0) -> int:
    """Feed `chunks` (the last one completes the body) and return the status the guard or the app answered."""
    queue = list(chunks)
    statuses = []

    async def receive():
        await asyncio.sleep(pause_s)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": HEADERS}
    await guard(scope, receive, send)
    return statuses[0]


async def app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def guard(**limits):
    settings = {"max_bytes": 1000, "min_read_s": 5, "read_s_per_mib": 0, "max_buffered_bytes": 1500}
    return JsonBodyOnly(app, **{**settings, **limits, "retry_after_s": 1})


def test_bodies_being_received_share_a_byte_budget():
    async def scenario():
        shared = guard()
        big = [b"x" * 400] * 2  # 800 bytes each, in two chunks
        return await asyncio.gather(*(answered_by(shared, big, pause_s=0.01) for _ in range(3)))

    statuses = asyncio.run(scenario())
    assert sorted(statuses) == [200, 429, 429] or sorted(statuses) == [200, 200, 429], statuses


def test_slow_senders_take_no_budget_and_end_with_408():
    async def scenario():
        shared = guard(min_read_s=0.3)
        slow = [answered_by(shared, [b"{"] * 50, pause_s=0.1) for _ in range(16)]
        fast = answered_by(shared, [b"x" * 900])
        return await asyncio.gather(fast, *slow)

    fast, *slow = asyncio.run(scenario())
    assert fast == 200 and set(slow) == {408}
