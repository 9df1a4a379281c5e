"""Alerts: short messages to chat webhooks (`ar-ray run --notify URL`, repeatable) when something happens.

What is announced: a new best (its gain and how it compares with the bar it had to clear), the run stopping
and why, a streak of failed runs, and spend crossing 50 %, 80 % and 100 % of a budget. Each webhook has a
thread of its own: posting never waits on the network, and a slow or dead webhook never slows the research
loop. Messages of one kind are sent at most once per `interval` seconds per webhook; what comes meanwhile is
coalesced into one message (the latest, with a count) sent when the interval is over, or when the run ends.
A failed post is retried with a growing pause (429's Retry-After is honoured), then logged and counted;
`ar-ray status` shows what each webhook sent and its last error. Nothing here is ever fatal to the run.

Payloads: Slack incoming webhooks (hooks.slack.com) take {"text": ...}; Discord webhooks (discord.com,
discordapp.com) take {"content": ...} (at most 2000 characters); any other URL gets both keys and the event as
structured JSON under "ar_ray", which Mattermost, Rocket.Chat, ntfy-style relays and your own receivers read.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ar_ray.lab.spend import THRESHOLDS

log = logging.getLogger("ar_ray.notify")

FAILURE_STREAK = 10  # failed runs in a row that raise an alert (again at each multiple)
INTERVAL = 60.0  # seconds between two messages of one kind to one webhook
RETRIES = 3  # retries of a failed post (so 4 tries), pausing BACKOFF, 2 x BACKOFF, 4 x BACKOFF seconds
BACKOFF = 1.0
TIMEOUT = 10.0  # seconds for one HTTP request
MAX_RETRY_AFTER = 60.0  # a 429's Retry-After is honoured up to this
BACKLOG = 200  # messages waiting per webhook; beyond it the oldest are dropped (and counted)
DISCORD_LIMIT = 2000


class NotifyError(ValueError):
    """A --notify value is not a usable webhook URL; the message says what to give."""


def resolve(spec: str, environ=None) -> str:
    """A --notify value: a URL, or env:NAME for a URL kept in an environment variable (out of shell history)."""
    environ = os.environ if environ is None else environ
    url = spec.strip()
    if url.startswith("env:"):
        name = url[4:]
        if not environ.get(name):
            raise NotifyError(f"--notify {spec}: the environment variable {name} is not set; export it with the "
                              "webhook URL, or pass the URL itself")
        url = environ[name].strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(f"--notify {redact(url)}: not an http(s) URL; give a webhook URL such as "
                          "https://hooks.slack.com/services/... or https://discord.com/api/webhooks/..., "
                          "or env:NAME to read it from an environment variable")
    return url


def redact(url: str) -> str:
    """A webhook URL without its secret part (the path and query), for logs, status and run.json."""
    if url.startswith("env:"):
        return url
    parts = urlsplit(url)
    if not parts.hostname:  # not a URL: its first part says enough (a token comes after the host)
        return url.split("/", 1)[0][:60] + ("/..." if "/" in url else "")
    host = parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..." if parts.path not in ("", "/") or parts.query else f"{parts.scheme}://{host}{port}"


def flavour(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    if host == "hooks.slack.com" or host.endswith(".slack.com"):
        return "slack"
    if host in ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"):
        return "discord"
    return "generic"


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>): text from a run (an LLM's description) must not ping
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(url: str, text: str, event: dict | None = None) -> dict:
    kind = flavour(url)
    if kind == "slack":
        return {"text": _slack_escape(text)}
    short = text if len(text) <= DISCORD_LIMIT else text[:DISCORD_LIMIT - 1] + "…"
    if kind == "discord":
        return {"content": short, "allowed_mentions": {"parse": []}}  # no @everyone from a run's text
    return {"text": text, "content": short, "ar_ray": event or {}}


@dataclass
class Message:
    kind: str  # best, stop, failures, spend, ...
    text: str
    event: dict = field(default_factory=dict)
    urgent: bool = False  # never held back by the rate limit (the run's last word)
    count: int = 1  # messages coalesced into this one


@dataclass
class WebhookState:
    url: str  # redacted
    sent: int = 0
    failed: int = 0  # messages given up on after every retry
    retries: int = 0
    coalesced: int = 0  # messages folded into a later one by the rate limit
    dropped: int = 0  # lost to a full backlog
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None


class Webhook:
    """One webhook URL and its sender thread."""

    def __init__(self, url: str, interval: float = INTERVAL, retries: int | None = None, backoff: float | None = None,
                 timeout: float | None = None, backlog: int = BACKLOG):
        self.url, self.interval = url, interval
        self.retries = RETRIES if retries is None else retries  # (module defaults read now: tests may lower them)
        self.backoff = BACKOFF if backoff is None else backoff
        self.timeout = TIMEOUT if timeout is None else timeout
        self.state = WebhookState(redact(url))
        self._outbox: collections.deque[Message] = collections.deque()
        self._backlog = backlog
        self._held: dict[str, tuple[Message, float]] = {}  # kind -> (coalesced message, when it may go)
        self._last: dict[str, float] = {}  # kind -> when its last message was queued
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=f"ar-ray-notify {self.state.url}", daemon=True)
        self._thread.start()

    def post(self, msg: Message) -> None:
        """Queue a message; never blocks on the network."""
        now = time.monotonic()
        with self._cond:
            if self._closing and not self._thread.is_alive():
                return
            if msg.kind in self._held:  # a message of this kind waits already: fold this one into it
                held, due = self._held.pop(msg.kind)
                self.state.coalesced += 1
                if msg.urgent:  # (and send it now: an older one of its kind must not come after it)
                    self._enqueue(_merge(held, msg), now)
                else:
                    self._held[msg.kind] = (_merge(held, msg), due)
            elif not msg.urgent and now - self._last.get(msg.kind, -math.inf) < self.interval:
                self._held[msg.kind] = (msg, self._last[msg.kind] + self.interval)
            else:
                self._enqueue(msg, now)
            self._cond.notify()

    def _enqueue(self, msg: Message, now: float) -> None:
        self._last[msg.kind] = now
        self._outbox.append(msg)
        while len(self._outbox) > self._backlog:
            self._outbox.popleft()
            self.state.dropped += 1

    def close(self, wait: float = 10.0) -> bool:
        """Send what is held now, then let the thread finish; wait up to `wait` seconds. True when all went."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=max(0.0, wait))
        return not self._thread.is_alive()

    def pending(self) -> int:
        with self._cond:
            return len(self._outbox) + len(self._held) + self._busy

    def _next(self) -> Message | None:
        """The next message to send (held ones when their interval is over, all of them once closing)."""
        with self._cond:
            while True:
                now = time.monotonic()
                for kind, (msg, due) in list(self._held.items()):
                    if self._closing or now >= due:
                        del self._held[kind]
                        self._enqueue(msg, now)
                if self._outbox:
                    self._busy = True
                    return self._outbox.popleft()
                if self._closing:
                    return None
                wake = min((due for _, due in self._held.values()), default=None)
                self._cond.wait(None if wake is None else max(0.0, wake - now))

    def _loop(self) -> None:
        while (msg := self._next()) is not None:
            try:
                self._deliver(msg)
            except Exception as e:  # noqa: BLE001  (never let the sender thread die)
                self._failed(msg, f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._busy = False

    def _deliver(self, msg: Message) -> None:
        body = json.dumps(payload(self.url, _text(msg), {"kind": msg.kind, "count": msg.count, **msg.event})).encode()
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.state.retries += 1
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": "ar-ray"})
            pause = self.backoff * 2 ** attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(65536)
                self.state.sent += 1
                self.state.last_sent_at = time.time()
                return
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} {e.reason}"
                if e.code == 429:
                    pause = _retry_after(e, pause)
                elif 400 <= e.code < 500 and e.code != 408:  # the URL or the payload is wrong: retrying cannot help
                    break
            except (OSError, ValueError) as e:  # refused, unreachable, timed out, TLS
                error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(pause)
        self._failed(msg, error)

    def _failed(self, msg: Message, error: str) -> None:
        self.state.failed += 1
        self.state.last_error, self.state.last_error_at = error, time.time()
        log.warning("webhook %s: %s message not delivered after %d tries: %s", self.state.url, msg.kind,
                    self.retries + 1, error)


def _retry_after(e, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(e.headers.get("Retry-After", default))))
    except (TypeError, ValueError):
        return default


def _merge(held: Message, new: Message) -> Message:
    """Two messages of one kind as one: the newest text, and how many it stands for."""
    n = held.count + new.count
    return Message(new.kind, new.text, {**new.event, "coalesced": n}, held.urgent or new.urgent, n)


def _text(msg: Message) -> str:
    return msg.text if msg.count == 1 else f"{msg.text}\n({msg.count} {msg.kind} alerts since the last one; this is the latest)"


class Notifier:
    """Fans each message out to every webhook."""

    def __init__(self, urls: list[str], **options):
        self.webhooks = [Webhook(u, **options) for u in urls]

    def post(self, kind: str, text: str, event: dict | None = None, urgent: bool = False) -> None:
        for w in self.webhooks:
            w.post(Message(kind, text, dict(event or {}), urgent))

    def close(self, wait: float = 10.0) -> bool:
        """Flush and stop every webhook's thread, all within `wait` seconds in total."""
        deadline = time.monotonic() + wait
        for w in self.webhooks:
            with w._cond:
                w._closing = True
                w._cond.notify()
        return all([w.close(deadline - time.monotonic()) for w in self.webhooks])

    def state(self) -> list[dict]:
        return [vars(w.state).copy() for w in self.webhooks]


# ---- what is announced ----

class Alerts:
    """A driver event callback (`on_event(kind, driver, row)`) that turns events into messages."""

    def __init__(self, notifier: Notifier, failure_streak: int = FAILURE_STREAK, close_wait: float = 15.0):
        self.notifier, self.failure_streak, self.close_wait = notifier, failure_streak, close_wait
        self.streak = 0
        self.streak_statuses: collections.Counter = collections.Counter()
        self.announced: dict[str, set[float]] = {}  # budget -> thresholds crossed (said, or passed before a resume)
        self.closed = False

    def __call__(self, kind: str, driver, row: dict | None) -> None:
        try:
            if kind == "row" and row is not None:
                self._row(driver, row)
            if kind in ("row", "tick") and driver is not None:
                self._spend(driver)
            elif kind == "finished" and driver is not None:
                self._spend(driver)
                self._finished(driver, row or {})
        except Exception as e:  # noqa: BLE001  (an alert must never stop the run)
            log.warning("alerts: %s: %s", type(e).__name__, e)

    def state(self) -> list[dict]:
        return self.notifier.state()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.notifier.close(self.close_wait)

    def _head(self, driver) -> str:
        return f"ar-ray {driver.run_id}"

    def _row(self, driver, row: dict) -> None:
        if row.get("decision") == "keep":
            self._best(driver, row)
        if row.get("decision") == "skip":
            return
        if row.get("status") in ("ok", "pruned"):
            self.streak = 0
            self.streak_statuses.clear()
            return
        self.streak += 1
        self.streak_statuses[row.get("status") or "?"] += 1
        if self.failure_streak and self.streak % self.failure_streak == 0:
            why = (row.get("error") or "").strip().splitlines()
            counts = ", ".join(f"{k} {v}" for k, v in self.streak_statuses.most_common())
            text = (f"{self._head(driver)}: {self.streak} runs failed in a row ({counts}); last: "
                    f"{row['experiment_id']} {row.get('status')}" + (f": {why[-1][:300]}" if why else "")
                    + ". Check the target and the proposals (`ar-ray ledger RUN_DIR`).")
            self.notifier.post("failures", text, {"streak": self.streak, "statuses": dict(self.streak_statuses),
                                                  "experiment_id": row["experiment_id"]})

    def _best(self, driver, row: dict) -> None:
        metric = driver.target.metric
        gain, bar, noise, n = row.get("gain"), row.get("threshold"), row.get("noise"), row.get("group_n")
        value = row.get("best_metric")
        what = (row.get("description") or "").strip().splitlines()
        text = (f"{self._head(driver)}: new best {metric} {_num(value)} (version {row.get('best_version')}, "
                f"{row.get('group_id') or row['experiment_id']}" + (f": {what[0][:200]}" if what else "") + ")")
        if gain is not None:
            text += f"; gain {_num(gain)}"
            if bar is not None and bar > 0:
                text += (f", {gain / bar:.1f}x the bar of {_num(bar)} it had to clear (noise {_num(noise)}"
                         + (f", {n} runs" if n else "") + ")")
            else:
                text += " (kept on any gain: greedy acceptance or a deterministic target, no significance test)"
        self.notifier.post("best", text, {"metric": metric, "value": value, "gain": gain, "threshold": bar,
                                          "noise": noise, "runs": n, "experiment_id": row["experiment_id"],
                                          "group_id": row.get("group_id"), "version": row.get("best_version")})

    def _spend(self, driver) -> None:
        used = driver.budget_used() if hasattr(driver, "budget_used") else {}
        first = not self.announced
        for budget, fraction in used.items():
            done = self.announced.setdefault(budget, set())
            crossed = [t for t in THRESHOLDS if fraction >= t and t not in done]
            if not crossed:
                continue
            done.update(crossed)
            if first and getattr(driver, "resumed", False):
                continue  # crossed before this resume: said then
            meter = driver.meter
            limit = (f"--max-cost ${meter.budget.max_cost:g} ({' + '.join(c.upper() for c in meter.budget.counts)})"
                     if budget == "cost" else f"--max-gpu-hours {meter.budget.max_gpu_hours:g}")
            top = max(crossed)
            then = ("no new candidate starts; what runs finishes" if top >= 1.0 else "the run goes on")
            text = f"{self._head(driver)}: {top:.0%} of {limit} spent ({fraction:.0%} now); {then}"
            self.notifier.post("spend", text, {"budget": budget, "threshold": top, "fraction": fraction},
                               urgent=top >= 1.0)

    def _finished(self, driver, info: dict) -> None:
        state = info.get("state", "finished")
        why = info.get("why") or (driver.why_stopped() if hasattr(driver, "why_stopped") else "")
        c = driver.count
        text = (f"{self._head(driver)} {state}: {why}. Best {driver.target.metric} {_num(driver.best.metric)} "
                f"(version {driver.best.version}); {c.ran} experiments, {c.kept} kept, {c.failed} failed")
        meter = getattr(driver, "meter", None)
        if meter is not None:
            from ar_ray.lab.spend import describe
            text += "; " + describe(meter.figures(c.cost_usd, c.kept, driver.best.metric), driver.target.metric)
        self.notifier.post("stop", text, {"state": state, "why": why, "best": driver.best.metric,
                                          "experiments": c.ran, "kept": c.kept}, urgent=True)
        self.close()



def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"
