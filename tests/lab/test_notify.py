"""Alerts (--notify): real HTTP servers on loopback, started here, record what each webhook got."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers_targets import local_ray

from ar_ray.lab import notify
from ar_ray.lab.notify import Alerts, Message, Notifier, Webhook


class Hook:
    """A webhook receiver: records every POST; answers from `codes` in order (then 200); `gate` holds answers."""

    def __init__(self, codes=(), retry_after: str | None = None):
        self.got: list[dict] = []
        self.codes = list(codes)
        self.retry_after = retry_after
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.got.append({"path": self.path, "body": body, "type": self.headers["Content-Type"]})
                hook.arrived.set()
                hook.gate.wait(30)
                code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                if code == 429 and hook.retry_after is not None:
                    self.send_header("Retry-After", hook.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def texts(self) -> list[str]:
        return [g["body"]["text"] for g in self.got]

    def close(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def dead_url() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/hook"


def test_a_message_reaches_the_webhook_with_slack_and_discord_keys(hook):
    n = Notifier([hook.url], interval=0)
    n.post("best", "new best val_bpb 0.98", {"gain": 0.01})
    assert n.close(10)
    [got] = hook.got
    assert got["path"] == "/hooks/secret-token" and got["type"] == "application/json"
    assert got["body"]["text"] == got["body"]["content"] == "new best val_bpb 0.98"
    assert got["body"]["ar_ray"] == {"kind": "best", "count": 1, "gain": 0.01}
    assert n.state()[0]["sent"] == 1 and n.state()[0]["url"].endswith("/...")  # the token never shows


def test_payload_follows_the_host():
    slack = notify.payload("https://hooks.slack.com/services/T0/B0/xyz", "gain <!channel> & more")
    assert slack == {"text": "gain &lt;!channel&gt; &amp; more"}  # a run's text cannot ping a channel
    discord = notify.payload("https://discord.com/api/webhooks/1/abc", "x" * 2500)
    assert len(discord["content"]) == 2000 and discord["allowed_mentions"] == {"parse": []}
    assert set(notify.payload("https://example.org/h", "t")) == {"text", "content", "ar_ray"}


def test_urls_are_checked_and_can_come_from_the_environment():
    assert notify.resolve("env:MY_HOOK", {"MY_HOOK": "https://hooks.slack.com/services/a"}) == \
        "https://hooks.slack.com/services/a"
    with pytest.raises(notify.NotifyError, match="MY_HOOK is not set"):
        notify.resolve("env:MY_HOOK", {})
    with pytest.raises(notify.NotifyError, match="not an http"):
        notify.resolve("hooks.slack.com/services/a")
    assert notify.redact("https://hooks.slack.com/services/T/B/secret") == "https://hooks.slack.com/..."


def test_a_failing_webhook_is_retried_then_delivers():
    h = Hook(codes=[500, 503])
    try:
        w = Webhook(h.url, interval=0, backoff=0.01)
        w.post(Message("stop", "the run stopped"))
        assert w.close(10)
        assert len(h.got) == 3 and h.texts() == ["the run stopped"] * 3
        assert (w.state.sent, w.state.failed, w.state.retries) == (1, 0, 2)
    finally:
        h.close()


def test_a_rate_limited_post_waits_as_long_as_retry_after_says():
    h = Hook(codes=[429], retry_after="0")
    try:
        w = Webhook(h.url, interval=0, backoff=30)  # a 30 s backoff would outlast close(10): Retry-After wins
        w.post(Message("best", "b"))
        assert w.close(10) and w.state.sent == 1 and w.state.retries == 1
    finally:
        h.close()


def test_a_webhook_that_is_down_is_logged_and_counted_never_raised(caplog):
    w = Webhook(dead_url(), interval=0, retries=2, backoff=0.01)
    w.post(Message("failures", "10 runs failed in a row"))
    assert w.close(10)
    assert (w.state.sent, w.state.failed, w.state.retries) == (0, 1, 2)
    assert "Connection refused" in w.state.last_error or "URLError" in w.state.last_error
    assert any("not delivered after 3 tries" in r.getMessage() for r in caplog.records)


def test_a_client_error_is_not_retried():
    h = Hook(codes=[404])
    try:
        w = Webhook(h.url, interval=0, backoff=0.01)
        w.post(Message("best", "b"))
        assert w.close(10) and len(h.got) == 1 and w.state.failed == 1 and w.state.last_error.startswith("HTTP 404")
    finally:
        h.close()


def test_posting_never_waits_on_a_slow_webhook(hook):
    hook.gate.clear()  # the receiver holds every answer until the test lets it go
    w = Webhook(hook.url, interval=0)
    w.post(Message("best", "first"))
    assert hook.arrived.wait(10)  # the sender thread is inside the HTTP request now, blocked
    for i in range(50):  # and posting still returns: each goes to the queue
        w.post(Message("spend", f"m{i}", urgent=True))
    assert w.pending() == 51 and w.state.sent == 0
    hook.gate.set()
    assert w.close(20) and w.state.sent == 51


def test_messages_of_one_kind_are_coalesced_within_the_interval(hook):
    w = Webhook(hook.url, interval=3600)
    for i in range(5):
        w.post(Message("best", f"new best {i}"))
    w.post(Message("failures", "streak"))  # another kind has its own allowance
    w.post(Message("stop", "stopped", urgent=True))  # urgent: never held
    assert w.close(10)
    texts = hook.texts()
    assert texts[:3] == ["new best 0", "streak", "stopped"]
    assert texts[3].startswith("new best 4\n(4 best alerts since the last one")  # 1..4 folded, sent at the end
    assert len(texts) == 4 and w.state.coalesced == 3
    assert hook.got[3]["body"]["ar_ray"]["count"] == 4


def test_an_urgent_message_takes_the_held_one_of_its_kind_along(hook):
    """50 % then 80 % of a budget within the interval, then 100 % (urgent): the 80 % never arrives after it."""
    w = Webhook(hook.url, interval=3600)
    for text, urgent in (("50% spent", False), ("80% spent", False), ("100% spent", True)):
        w.post(Message("spend", text, urgent=urgent))
    assert w.close(10)
    assert hook.texts() == ["50% spent", "100% spent\n(2 spend alerts since the last one; this is the latest)"]


def test_a_confirmed_best_is_announced_with_its_gain_against_the_bar(hook):
    """The keep row of confirm mode carries the gain and the bar (threshold) it cleared; the message says both."""
    from types import SimpleNamespace
    driver = SimpleNamespace(run_id="r1", target=SimpleNamespace(metric="val_bpb"))
    alerts = Alerts(Notifier([hook.url], interval=0))
    row = {"experiment_id": "e00041", "group_id": "e00012", "decision": "keep", "status": "ok", "best_version": 3,
           "best_metric": 0.9812, "gain": 0.0123, "threshold": 0.0047, "noise": 0.0021, "group_n": 2,
           "description": "raise the learning rate to 0.04"}
    alerts("row", driver, row)
    alerts.close()
    [text] = hook.texts()
    assert text == ("ar-ray r1: new best val_bpb 0.9812 (version 3, e00012: raise the learning rate to 0.04); "
                    "gain 0.0123, 2.6x the bar of 0.0047 it had to clear (noise 0.0021, 2 runs)")


# ---- the alerts a run sends, through ar-ray run on a real local Ray ----

SCRIPT = "toys:ScriptedProposer"


@pytest.fixture(scope="module")
def h100_ray():
    """A real local Ray whose one (fake) GPU is an H100, as Ray's accelerator_type resource says."""
    yield from local_ray(num_cpus=2, num_gpus=1, resources={"accelerator_type:H100": 1})


def test_a_run_whose_baseline_fails_says_why_it_stopped(h100_ray, tmp_path):
    from toys import TOY_TRAIN, make_toy

    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.driver import RunAborted
    from ar_ray.engine.run import execute

    up = Hook()
    try:
        target = make_toy(tmp_path / "target", train=TOY_TRAIN.replace('MODE = "ok"', 'MODE = "crash"'))
        with pytest.raises(RunAborted):
            execute(RunConfig(target=str(target), run_dir=str(tmp_path / "run"), acceptance="greedy", trainers=1,
                              proposers=1, max_experiments=3, notify=(up.url,)))
    finally:
        up.close()
    [stop] = [g["body"]["ar_ray"] for g in up.got]
    assert stop["kind"] == "stop" and stop["state"] == "aborted"
    assert stop["why"].startswith("the unmodified target failed (crash)")


def test_a_run_announces_its_best_its_failures_its_budget_and_its_end(h100_ray, tmp_path, monkeypatch):
    from toys import make_toy

    from rich.console import Console

    from ar_ray.cli.progress import Progress
    from ar_ray.engine.config import RunConfig
    from ar_ray.engine.run import execute
    from ar_ray.ledger import store

    monkeypatch.setattr(notify, "BACKOFF", 0.01)  # the dead webhook's retries, quickly
    up, down = Hook(), dead_url()
    seen = {}
    try:
        target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.05' }\n")
        # a best, then two crashes in a row, then fresh learning rates (never better) until the budget is spent
        script = [[{"LR": 0.3}, "LR 0.3"], [{"MODE": "crash"}, "crash 1"], [{"MODE": "crash", "LR": 0.4}, "crash 2"]]
        cfg = RunConfig(target=str(target), run_dir=str(tmp_path / "run"), acceptance="greedy", trainers=1,
                        proposers=1, queue_depth=1, max_experiments=200, proposer=SCRIPT,
                        proposer_options={"script": script, "cost": 0.25}, notify=(up.url, down),
                        notify_failures=2, notify_interval=0, gpu_prices={"H100": 3600.0}, max_cost=5.0,
                        cost_counts=("gpu", "llm"))
        progress = Progress(tmp_path / "run", Console(file=io.StringIO()), live=False)

        def on_event(kind, driver, row):
            progress(kind, driver, row)
            if kind == "finished":
                seen.update(why=driver.why_stopped())

        summary = execute(cfg, on_event=on_event)
    finally:
        up.close()
    df = store.load(tmp_path / "run")
    events = [g["body"]["ar_ray"] for g in up.got]
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "stop" and kinds.count("stop") == 1
    stop = events[-1]
    # $3600 per GPU-hour is $1 per second of a run, and each proposal costs $0.25: the $5 budget of both stops it
    assert stop["state"] == "finished" and stop["why"] == seen["why"]
    assert re.fullmatch(r"--max-cost \$5 reached \(\$[\d.]+ of GPU \+ LLM\)", stop["why"])
    assert summary["total_cost_usd"] == pytest.approx(df.gpu_cost_usd.sum() + df.cost_usd.sum())
    assert summary["total_cost_usd"] >= 5.0 and summary["llm_cost_usd"] == pytest.approx(df.cost_usd.sum())
    assert df.cost_usd.sum() > 0
    assert stop["kept"] == summary["kept"] == 1 and 3 <= summary["experiments"] < 200
    keeps = df[df.decision == "keep"]
    bests = [e for e in events if e["kind"] == "best"]
    assert len(bests) == len(keeps) == 1 and bests[0]["gain"] == pytest.approx(keeps.iloc[0]["gain"])
    assert bests[0]["value"] == pytest.approx(keeps.iloc[0]["best_metric"])
    assert [e["streak"] for e in events if e["kind"] == "failures"] == [2]  # the two crashes in a row, said once
    spend = [e["threshold"] for e in events if e["kind"] == "spend"]
    assert spend[-1] == 1.0 and sorted(spend) == spend and len(spend) == len(set(spend))  # each crossing once
    assert kinds.index("stop") > max(i for i, k in enumerate(kinds) if k == "spend")
    # the dead webhook: every message tried, none delivered, the error kept; the run was not disturbed
    state = {w["url"]: w for w in summary["alerts"]}
    dead, alive = state[notify.redact(down)], state[notify.redact(up.url)]
    assert dead["sent"] == 0 and dead["failed"] == len(up.got) and "refused" in dead["last_error"]
    assert alive["sent"] == len(up.got) and alive["failed"] == 0
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["alerts"] == summary["alerts"]  # `ar-ray status` shows both webhooks, the last message included
    assert status["spend"]["budget_used"]["cost"] >= 1.0 and status["spend"]["gpu_cost_usd"] == pytest.approx(
        df.gpu_cost_usd.sum())
    assert "secret-token" not in (tmp_path / "run" / "run.json").read_text()  # the webhook's secret stays out


def test_after_a_resume_only_thresholds_crossed_from_now_on_are_announced(hook):
    """A resumed run that had spent 60 % said 50 % before it stopped: it says 80 % and 100 %, not 50 % again."""
    from types import SimpleNamespace

    from ar_ray.lab.spend import Budget, Meter, Prices
    meter = Meter(Prices({"H100": 3600.0}), Budget(max_cost=10.0, counts=("gpu",)), gpus=1)
    meter.restore([{"decision": "keep", "gpu_cost_usd": 6.0}])
    driver = SimpleNamespace(run_id="r2", meter=meter, resumed=True, budget_used=lambda: meter.fractions(0.0))
    alerts = Alerts(Notifier([hook.url], interval=0))
    alerts("tick", driver, None)
    for seconds in (2.5, 2.0):  # $1 a second: 85 %, then 105 %
        meter.charge("H100", 0.0, 0.0, run_seconds=seconds)
        alerts("tick", driver, None)
    alerts.close()
    assert [e["body"]["ar_ray"]["threshold"] for e in hook.got] == [0.8, 1.0]
    assert hook.texts()[-1] == "ar-ray r2: 100% of --max-cost $10 (GPU) spent (105% now); no new candidate starts; what runs finishes"
