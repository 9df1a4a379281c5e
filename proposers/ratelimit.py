"""One rate limit per LLM endpoint, shared by every proposer that calls it.

`RateLimiter` holds two token buckets (requests per minute, tokens per minute).
It works by reservation: `reserve(tokens)` books the earliest moment at which the
request fits both buckets, takes its share at once (a bucket may go below zero:
that is the queue of later bookings) and returns how long the caller must wait.
The booking is one synchronous computation, so concurrent callers never race,
and the grants it hands out can never exceed `burst + rate * window` in any
window: a caller that waits longer than told only makes its request later.

Under Ray, the limiter lives in one named async actor per endpoint
(`ar-ray-ratelimit-<digest of base_url + model>`), found or created by whichever
proposer actor needs it first; without Ray, one plain object per endpoint in
this process plays the same role. `limiter_for(...)` returns a `Limiter` with an
async `acquire(tokens)` that hides which.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time


class RateLimiter:
    """Token buckets for requests/minute and tokens/minute; `reserve` returns the wait in seconds."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, burst: float | None = None,
                 clock=time.monotonic):
        self.clock = clock
        now = clock()
        self.req_rate = rpm / 60.0 if rpm else None  # per second
        self.req_cap = float(burst) if burst else (max(1.0, math.ceil((rpm or 0) / 10.0)))  # 6 s worth by default
        self.req_level = self.req_cap
        self.tok_rate = tpm / 60.0 if tpm else None
        self.tok_cap = float(tpm or 0)  # a minute's worth of tokens may go at once
        self.tok_level = self.tok_cap
        self.stamp = now
        self.not_before = now  # a server's Retry-After holds everyone back
        self.granted = 0
        self._lock = threading.Lock()  # the in-process limiter may be shared by threads

    def _refill(self, now: float) -> None:
        dt = max(0.0, now - self.stamp)
        if self.req_rate:
            self.req_level = min(self.req_cap, self.req_level + dt * self.req_rate)
        if self.tok_rate:
            self.tok_level = min(self.tok_cap, self.tok_level + dt * self.tok_rate)
        self.stamp = max(self.stamp, now)

    def reserve(self, tokens: float = 0.0) -> float:
        """Book one request of about `tokens` tokens; returns the seconds to wait before sending it."""
        with self._lock:
            return self._reserve(tokens)

    def _reserve(self, tokens: float) -> float:
        now = self.clock()
        self._refill(now)
        wait = max(0.0, self.not_before - now)
        if self.req_rate:
            wait = max(wait, (1.0 - self.req_level) / self.req_rate)
        if self.tok_rate and tokens > 0:
            # a request bigger than the bucket waits for a full bucket, then goes (else it never could)
            need = min(float(tokens), self.tok_cap)
            wait = max(wait, (need - self.tok_level) / self.tok_rate)
        if self.req_rate:
            self.req_level -= 1.0
        if self.tok_rate:
            self.tok_level -= float(tokens)
        self.granted += 1
        return max(0.0, wait)

    def settle(self, delta_tokens: float) -> None:
        """Correct the token bucket once the real usage is known (delta = actual - reserved)."""
        if self.tok_rate:
            with self._lock:
                self._refill(self.clock())
                self.tok_level = min(self.tok_cap, self.tok_level - float(delta_tokens))

    def pause(self, seconds: float) -> None:
        """The server said 429 / Retry-After: nobody sends before then."""
        with self._lock:
            self.not_before = max(self.not_before, self.clock() + max(0.0, float(seconds)))

    def stats(self) -> dict:
        return {"granted": self.granted, "req_level": self.req_level, "tok_level": self.tok_level}


class RateLimiterActor(RateLimiter):
    """The same, as an async Ray actor: its methods run one at a time on the actor's event loop."""

    async def reserve(self, tokens: float = 0.0) -> float:  # type: ignore[override]
        return RateLimiter.reserve(self, tokens)

    async def settle(self, delta_tokens: float) -> None:  # type: ignore[override]
        RateLimiter.settle(self, delta_tokens)

    async def pause(self, seconds: float) -> None:  # type: ignore[override]
        RateLimiter.pause(self, seconds)

    async def stats(self) -> dict:  # type: ignore[override]
        return RateLimiter.stats(self)


def actor_name(base_url: str | None, model: str) -> str:
    """Stable across processes (unlike hash(), which is salted per process)."""
    digest = hashlib.sha256(f"{base_url or 'default'}\n{model}".encode()).hexdigest()[:16]
    return f"ar-ray-ratelimit-{digest}"


class Limiter:
    """What a proposer holds: async acquire/settle/pause against the local object or the shared actor."""

    def __init__(self, name: str, rpm, tpm, burst):
        self.name, self.rpm, self.tpm, self.burst = name, rpm, tpm, burst
        self._actor = None
        self._local: RateLimiter | None = None

    async def _handle(self):
        import ray
        if self._actor is None:
            def get():
                return ray.remote(RateLimiterActor).options(
                    name=self.name, get_if_exists=True, lifetime=None, num_cpus=0, max_restarts=-1,
                ).remote(self.rpm, self.tpm, self.burst)
            self._actor = await asyncio.to_thread(get)
        return self._actor

    async def _call(self, method: str, *args):
        import ray
        if not ray.is_initialized():
            if self._local is None:
                self._local = _local_limiter(self.name, self.rpm, self.tpm, self.burst)
            return getattr(self._local, method)(*args)
        for attempt in range(2):
            handle = await self._handle()
            try:
                return await getattr(handle, method).remote(*args)
            except ray.exceptions.RayActorError:
                self._actor = None  # its owner went away: find or make it again, once
                if attempt:
                    raise

    async def acquire(self, tokens: float = 0.0) -> float:
        """Wait until this request may go; returns the seconds waited."""
        wait = await self._call("reserve", tokens)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def settle(self, delta_tokens: float) -> None:
        if self.tpm and delta_tokens:
            await self._call("settle", delta_tokens)

    async def pause(self, seconds: float) -> None:
        await self._call("pause", seconds)


_LOCAL: dict[str, RateLimiter] = {}
_LOCAL_LOCK = threading.Lock()


def _local_limiter(name: str, rpm, tpm, burst) -> RateLimiter:
    with _LOCAL_LOCK:
        if name not in _LOCAL:
            _LOCAL[name] = RateLimiter(rpm, tpm, burst)
        return _LOCAL[name]


def limiter_for(endpoint: dict) -> Limiter | None:
    """The shared limiter of an endpoint, or None when it sets neither rpm nor tpm."""
    if not endpoint.get("rpm") and not endpoint.get("tpm"):
        return None
    return Limiter(actor_name(endpoint.get("base_url"), endpoint["model"]), endpoint.get("rpm"), endpoint.get("tpm"),
                   endpoint.get("burst"))
