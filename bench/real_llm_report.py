"""The real-model smoke run's two helpers (bench/real_llm.sh): a recording proxy and the report.

    python bench/real_llm_report.py proxy --port 8101 --upstream http://127.0.0.1:8100 --log RUN/transcript.jsonl
    python bench/real_llm_report.py report RUN [--transcript RUN/transcript.jsonl] [--json out.json]

The proxy sits between ar-ray and the model server on loopback and appends every exchange (request body,
answer, status, start and end time) to a JSON-lines transcript: the real answers, for the report and for
regression tests. It forwards bytes unchanged; it never retries or alters anything.

The report reads the run's ledger and the transcript and says, per proposal and in all: answers received,
answers in which an edit format was found (parsed), edits that applied and compiled, proposals repaired in
conversation (usable only after a repair turn), invalid, trained, kept, tokens and latency. Each answer is
replayed through ar-ray's own parser against the files its prompt showed, and every trained candidate is
checked to be exactly such a valid edit of the target's editable files (same code hash): the report exits 1
if any trained candidate is not, or if a transcript line cannot be matched to its proposal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NEVER_RAN = ("invalid_edit", "duplicate", "proposer_error", "unused")


# ---------------------------------------------------------------------------
# the recording proxy
# ---------------------------------------------------------------------------

def serve_proxy(port: int, upstream: str, log: Path, timeout: float) -> None:
    lock = threading.Lock()
    upstream = upstream.rstrip("/")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self, method: str) -> None:
            t0 = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization", "accept")}
            req = urllib.request.Request(upstream + self.path, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    status, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
            except (urllib.error.URLError, OSError) as e:  # the server is gone or too slow: a 502 the client sees
                status, ctype = 502, "application/json"
                data = json.dumps({"error": {"message": f"proxy: upstream {upstream}: {e}"}}).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its own timeout); the exchange is still logged
            self.close_connection = True
            if method == "POST":
                record = {"start": t0, "end": time.time(), "path": self.path, "status": status,
                          "request": _json_or_text(body), "response": _json_or_text(data)}
                with lock, open(log, "a") as f:
                    f.write(json.dumps(record) + "\n")

        def do_POST(self):
            self._forward("POST")

        def do_GET(self):
            self._forward("GET")

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    print(f"proxy: 127.0.0.1:{port} -> {upstream}, transcript {log}", flush=True)
    httpd.serve_forever(poll_interval=0.2)


def _json_or_text(raw: bytes | None):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


# ---------------------------------------------------------------------------
# reading the transcript
# ---------------------------------------------------------------------------

def read_transcript(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return [r for r in out if isinstance(r.get("request"), dict) and r["path"].rstrip("/").endswith("/chat/completions")]


def answer_text(record: dict) -> str | None:
    """The assistant's text of a 200 answer; None for an HTTP error."""
    resp = record.get("response")
    if record.get("status") != 200 or not isinstance(resp, dict) or not resp.get("choices"):
        return None
    return (resp["choices"][0].get("message") or {}).get("content") or ""


def conversations(records: list[dict]) -> list[list[dict]]:
    """Requests grouped into conversations (a proposer has several in flight at once): a repair turn's messages
    are its conversation's last request's messages plus the replayed answer and the repair message; a retry of
    a request repeats its messages. Anything else opens a conversation."""
    convs: list[list[dict]] = []
    for r in sorted(records, key=lambda r: r["start"]):
        msgs = r["request"].get("messages", [])
        home = None
        for c in convs:
            last = c[-1]["request"].get("messages", [])
            said = answer_text(c[-1])
            replayed = msgs[-2].get("content") or "" if len(msgs) >= 2 else ""
            if msgs[:-2] == last and said is not None and replayed[:2000] == (said if said.strip() else "(empty answer)")[:2000]:
                home = c  # identical prompts (two proposals of one state) differ by the answer replayed
            elif msgs == last and said is None:
                home = c
        if home is None:
            convs.append([r])
        else:
            home.append(r)
    return convs


def prompt_files(first_user: str, editable: list[str]) -> dict[str, str] | None:
    """The editable files as the opening prompt showed them (proposers.prompt.format_files writes each as
    `path`, a fence longer than any backtick run inside, the text, the fence); None if not found."""
    from proposers.prompt import format_files

    files = {}
    for path in editable:
        start = first_user.find("\n" + path + "\n`")
        if start < 0:
            return None
        at = start + len(path) + 2
        ticks = len(first_user[at:]) - len(first_user[at:].lstrip("`"))
        fence = "`" * ticks
        body_start = first_user.index("\n", at) + 1
        end = first_user.find("\n" + fence + "\n", body_start - 1)
        if end < 0:
            end = first_user.find("\n" + fence, body_start - 1)
        text = first_user[body_start:end + 1]
        if format_files({path: text}) not in first_user:
            return None
        files[path] = text
    return files


def replay(text: str | None, files: dict[str, str], editable: list[str]) -> tuple[str, str, dict | None]:
    """(stage, reason, new files) of one answer through ar-ray's own parser: stage is http_error, empty,
    no_edit (no edit format found), applies_not (parsed, did not apply), syntax (applied, does not compile)
    or usable."""
    from ar_ray.code import answers, edits

    if text is None:
        return "http_error", "", None
    if not text.strip():
        return "empty", "empty answer", None
    try:
        parsed = answers.parse_answer(text, files, set(editable))
    except edits.EditError as e:
        return "no_edit", answers.short_reason(str(e)), None
    try:
        new = edits.apply_edits(files, parsed, set(editable))
    except edits.EditError as e:
        return "applies_not", answers.short_reason(str(e)), None
    changed = {p: t for p, t in new.items() if files.get(p) != t}
    try:
        edits.check_syntax(changed)
    except edits.EditError as e:
        return "syntax", answers.short_reason(str(e)), None
    return "usable", "", new


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------

def _proposal_rows(df):
    """The LLM's proposals: first rows of candidates (no baseline, policy merge or follow-up runs)."""
    prop = df["proposer"].astype(str)
    role = df["role"].astype(object)
    mask = ~prop.isin(["baseline", "policy", "nan", "None"]) & (role.isna() | (role == "screen"))
    return df[mask].sort_values("proposed_at")


def report(run_dir: Path, transcript: Path, editable: list[str] | None = None) -> dict:
    from ar_ray.code.codehash import code_hash
    from ar_ray.ledger import load

    df = load(run_dir)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    if editable is None:  # the target's editable files, from its ar-ray.toml
        import tomllib
        conf = Path(run.get("target") or "") / "ar-ray.toml"
        editable = list(tomllib.loads(conf.read_text())["target"]["editable"]) if conf.is_file() else ["train.py"]
    props = _proposal_rows(df)
    convs = conversations(read_transcript(transcript))
    problems: list[str] = []  # what makes the report fail: a trained candidate that is not its answer's valid edit
    notes: list[str] = []  # what is only worth saying

    # match each proposal to the conversation that ended last before it was made (one proposer: in order)
    ends = [max(r["end"] for r in c) for c in convs]
    used: set[int] = set()
    per: list[dict] = []
    for _, row in props.iterrows():
        made = row["proposed_at"].timestamp() if row["proposed_at"] is not None else None
        k = None
        if made is not None:
            options = [j for j, e in enumerate(ends) if j not in used and e <= made + 1.0]
            # two conversations in flight can end within a second: the row's token sums tell them apart
            same = [j for j in options if _sums(convs[j]) == (_int(row["prompt_tokens"]), _int(row["completion_tokens"]))]
            k = max(same or options, key=lambda j: ends[j]) if options else None
        entry = {"experiment_id": row["experiment_id"], "status": str(row["status"]), "decision": str(row["decision"]),
                 "prompt_tokens": _int(row["prompt_tokens"]), "completion_tokens": _int(row["completion_tokens"]),
                 "seconds": _num(row["proposer_seconds"]), "error": (row["error"] or "")[:300],
                 "description": row["description"] or "", "answers": []}
        if k is None:
            if str(row["status"]) != "proposer_error" or (row["prompt_tokens"] or 0):
                notes.append(f"{row['experiment_id']}: no conversation in the transcript ends before it")
            per.append(entry)
            continue
        used.add(k)
        conv = convs[k]
        first_user = next(m["content"] for m in conv[0]["request"]["messages"] if m.get("role") == "user")
        files = prompt_files(first_user, editable)
        if files is None:
            problems.append(f"{row['experiment_id']}: the files could not be read back from its prompt")
            files = {}
        last_new = None
        for r in conv:
            stage, reason, new = replay(answer_text(r), files, editable) if files else ("unknown", "", None)
            u = (r.get("response") or {}).get("usage") if isinstance(r.get("response"), dict) else None
            timings = (r.get("response") or {}).get("timings") if isinstance(r.get("response"), dict) else None
            entry["answers"].append({"stage": stage, "reason": reason, "seconds": round(r["end"] - r["start"], 2),
                                     "completion_tokens": (u or {}).get("completion_tokens"),
                                     "tokens_per_s": (timings or {}).get("predicted_per_second"),
                                     "finish_reason": _finish(r)})
            last_new = new
        ran = entry["status"] not in NEVER_RAN
        if ran or entry["status"] == "duplicate":
            if last_new is None or code_hash(last_new) != row["edit_hash"]:
                problems.append(f"{row['experiment_id']} ({entry['status']}) is not the valid edit its last answer "
                                "makes of the prompt's files")
            extra = set(last_new or {}) - set(files)
            if extra:
                problems.append(f"{row['experiment_id']} adds files outside the editable ones: {sorted(extra)}")
        per.append(entry)
    for j, c in enumerate(convs):
        if j not in used:
            notes.append(f"conversation {j + 1} ({len(c)} requests, started {time.strftime('%H:%M:%S', time.localtime(c[0]['start']))}) "
                            "has no proposal row (cut off at the end of the run?)")

    kept_ids = set(df.loc[df["decision"].astype(str) == "keep", "experiment_id"]) | set(
        df.loc[df["decision"].astype(str) == "keep", "group_id"].dropna())
    answers_all = [a for e in per for a in e["answers"]]
    stages = [a["stage"] for a in answers_all]
    usable_after_repair = [e for e in per if e["status"] not in ("invalid_edit", "proposer_error")
                           and len(e["answers"]) > 1 and e["answers"][-1]["stage"] == "usable"]
    totals = {
        "proposals": len(per),
        "answers": len(answers_all),
        "answers_parsed": sum(s in ("applies_not", "syntax", "usable") for s in stages),
        "edits_applied": sum(s in ("syntax", "usable") for s in stages),
        "edits_usable": sum(s == "usable" for s in stages),
        "repaired_in_conversation": len(usable_after_repair),
        "invalid": sum(e["status"] == "invalid_edit" for e in per),
        "proposer_error": sum(e["status"] == "proposer_error" for e in per),
        "duplicate": sum(e["status"] == "duplicate" for e in per),
        "trained": sum(e["status"] not in NEVER_RAN for e in per),
        "kept": sum(e["experiment_id"] in kept_ids for e in per),
        "stages": {s: stages.count(s) for s in sorted(set(stages))},
        "prompt_tokens_per_proposal": _stats([e["prompt_tokens"] for e in per]),
        "completion_tokens_per_proposal": _stats([e["completion_tokens"] for e in per]),
        "seconds_per_proposal": _stats([e["seconds"] for e in per]),
        "seconds_per_answer": _stats([a["seconds"] for a in answers_all]),
        "output_tokens_per_s": _stats([a["tokens_per_s"] for a in answers_all]),
    }
    return {"run_dir": str(run_dir), "totals": totals, "proposals": per, "problems": problems, "notes": notes}


def _sums(conv: list[dict]) -> tuple[int | None, int | None]:
    """The conversation's prompt and completion tokens as the ledger row adds them up (None: none reported)."""
    us = [r["response"].get("usage") or {} for r in conv if r.get("status") == 200 and isinstance(r.get("response"), dict)]
    p, c = sum(u.get("prompt_tokens") or 0 for u in us), sum(u.get("completion_tokens") or 0 for u in us)
    return (p or None), (c or None)


def _finish(r: dict):
    resp = r.get("response")
    if isinstance(resp, dict) and resp.get("choices"):
        return resp["choices"][0].get("finish_reason")
    return None


def _int(v):
    try:
        return None if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return None


def _num(v):
    try:
        return None if v is None or v != v else round(float(v), 2)
    except (TypeError, ValueError):
        return None


def _stats(values) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), 1), "median": round(statistics.median(vals), 1),
            "max": round(max(vals), 1), "n": len(vals)}


def print_report(rep: dict) -> None:
    t = rep["totals"]
    print(f"run: {rep['run_dir']}")
    print(f"proposals asked {t['proposals']}; answers {t['answers']}: parsed {t['answers_parsed']}, "
          f"applied {t['edits_applied']}, usable {t['edits_usable']}")
    print(f"repaired in conversation {t['repaired_in_conversation']}; invalid {t['invalid']}; proposer errors "
          f"{t['proposer_error']}; duplicates {t['duplicate']}; trained {t['trained']}; kept {t['kept']}")
    print("answer stages: " + ", ".join(f"{k} {v}" for k, v in t["stages"].items()))

    def fmt(name, s, unit=""):
        if s:
            print(f"{name}: mean {s['mean']:g}{unit}, median {s['median']:g}{unit}, max {s['max']:g}{unit} (n={s['n']})")
    fmt("prompt tokens per proposal", t["prompt_tokens_per_proposal"])
    fmt("completion tokens per proposal", t["completion_tokens_per_proposal"])
    fmt("latency per proposal", t["seconds_per_proposal"], " s")
    fmt("latency per answer", t["seconds_per_answer"], " s")
    fmt("output tokens/s (server)", t["output_tokens_per_s"])
    print()
    for e in rep["proposals"]:
        turns = " | ".join(f"{a['stage']}" + (f" ({a['reason'][:90]})" if a["reason"] else "") for a in e["answers"])
        print(f"{e['experiment_id']} {e['status']}/{e['decision']} {e['seconds']} s, "
              f"{e['prompt_tokens']}+{e['completion_tokens']} tok: {turns or '(no answer)'}")
    for n in rep.get("notes", []):
        print("note: " + n)
    if rep["problems"]:
        print("\nPROBLEMS:")
        for p in rep["problems"]:
            print("- " + p)
    else:
        print(f"\ncheck: each of the {t['trained']} trained candidates is the valid edit its model answer makes of "
              "the editable files; every other proposal ended as a ledger row with its reason")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("proxy")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=900.0)
    r = sub.add_parser("report")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--transcript", type=Path)
    r.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "proxy":
        serve_proxy(args.port, args.upstream, args.log, args.timeout)
        return 0
    rep = report(args.run_dir, args.transcript or args.run_dir / "transcript.jsonl")
    print_report(rep)
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1, default=str))
    return 1 if rep["problems"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
