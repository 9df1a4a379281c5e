"""
Fixed part of the `gpt` research target: presets, built-in corpus, BPE tokenizer,
dataloader and evaluation. READ-ONLY for proposers; train.py imports it.

    python prepare.py                   # build the data + tokenizer cache (idempotent, lock-protected)
    python prepare.py evaluate RUN_DIR  # the trusted evaluation of RUN_DIR/model.graph (ar-ray starts it)

Everything that defines what val_bpb means lives here, identical for every
candidate: the validation documents (never in the training stream), SEQ_LEN,
the number of evaluated tokens, and the metric itself: summed cross-entropy
(nats) of the model's logits / (ln 2 x UTF-8 bytes of the targets), BOS excluded.

Under ar-ray (AR_TRUSTED_EVAL=1, set by ar-ray.toml) training never sees the validation split (the cache
keeps it in a folder of its own, heldout/, which the training sandbox hides): train.py ends by saving
its model with save_model(), as a graph of ATen operations (modelfile.py), and `prepare.py evaluate`,
started by the trainer in a sandbox of its own, scores that file. No code of the candidate runs there,
so what it prints is the harness's own number. Run by hand, train.py evaluates in-process as before.

Environment (all optional): AR_CACHE_DIR (default ~/.cache/ar-ray/gpt), AR_DATA
(opt-in real data: a text file, or a directory/glob of parquet shards with a
`text` column), AR_PRESET (cpu|gpu), AR_VOCAB_SIZE (override the preset's),
AR_SEED, AR_THREADS, AR_BUDGET_SECONDS, AR_BUDGET_TOKENS, AR_RESULT_FILE, AR_PEAK_FLOPS (for MFU).
"""
import fcntl, functools, glob, hashlib, heapq, itertools, json, math, os, random, re, secrets, sys, time
from collections import Counter, defaultdict
T_IMPORT = time.time()  # (before numpy and torch: the evaluation's start-up is timed from here)

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Presets: the fixed conditions of an experiment on each kind of hardware.

PRESETS = {
    "cpu": dict(seq_len=256, vocab_size=1024, eval_tokens=2**16, budget_seconds=20.0, eval_batch=8,
                untimed_steps=2, corpus_mb=4, max_data_mb=32, tokenizer_sample_mb=1),
    "gpu": dict(seq_len=2048, vocab_size=8192, eval_tokens=2**22, budget_seconds=300.0, eval_batch=32,
                untimed_steps=10, corpus_mb=256, max_data_mb=2048, tokenizer_sample_mb=8),
}
MODEL_FILE = "model.graph"  # what save_model() writes in the run dir, and `prepare.py evaluate` scores
CORPUS_VERSION = 1          # bump when the generator changes: it is part of the cache key
TRAIN_SEED, VAL_SEED = 1337, 7331   # built-in corpus: train and val documents come from separate streams


def get_preset():
    name = os.environ.get("AR_PRESET") or ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in PRESETS:
        sys.exit(f"AR_PRESET must be one of {sorted(PRESETS)}, got {name!r}")
    cfg = dict(PRESETS[name], name=name)
    cfg["vocab_size"] = int(os.environ.get("AR_VOCAB_SIZE") or cfg["vocab_size"])
    return cfg


PRESET = get_preset()
SEQ_LEN = PRESET["seq_len"]
EVAL_TOKENS = PRESET["eval_tokens"]
UNTIMED_STEPS = PRESET["untimed_steps"]   # first optimizer steps (compilation, warm-up) are not timed
TRUSTED_EVAL = os.environ.get("AR_TRUSTED_EVAL") == "1"   # ar-ray scores the saved model (save_model) itself


def init_runtime():
    """Seed everything from AR_SEED, set CPU threads, pick the device. Returns (device, seed)."""
    seed = int(os.environ.get("AR_SEED", "42"))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(int(os.environ.get("AR_THREADS") or min(cores, 4)))
    device = "cuda" if torch.cuda.is_available() and PRESET["name"] == "gpu" else "cpu"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")    # TF32 for any float32 matmul
    return device, seed


# Peak dense bf16 tensor-core throughput (FLOP/s) by GPU name, the denominator of MFU. Checked in order
# (the most specific name first); AR_PEAK_FLOPS overrides, e.g. for a GPU not listed here.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.5e12), ("H200", 989.5e12),
              ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12))


def peak_flops(device, name=None):
    """FLOP/s the device could do at best (0 when unknown: MFU is then reported as 0)."""
    if os.environ.get("AR_PEAK_FLOPS"):
        return float(os.environ["AR_PEAK_FLOPS"])
    if device != "cuda":
        return 0.0
    name = name or torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS if key in name), 0.0)


def get_budget():
    """(seconds, tokens): exactly one is set. Tokens win when AR_BUDGET_TOKENS is given."""
    if os.environ.get("AR_BUDGET_TOKENS"):
        return None, int(float(os.environ["AR_BUDGET_TOKENS"]))
    return float(os.environ.get("AR_BUDGET_SECONDS") or PRESET["budget_seconds"]), None


# ---------------------------------------------------------------------------
# Built-in corpus: a synthetic "story" language with learnable structure at
# several ranges: word spelling (syllables), topic vocabularies per document,
# subject-verb agreement across relative clauses, gendered pronouns that refer
# back to names, possessions that are counted, transferred and later queried,
# arithmetic facts, and nested brackets that must close in order.

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
           "fifteen sixteen seventeen eighteen nineteen twenty").split()
_ONSETS = "b d f g k l m n p r s t v z br dr gr kl pl st tr sh ch th".split()
_VOWELS = "a e i o u a e i o ai ou ee".split()
_CODAS = ["", "", "", "", "n", "r", "l", "s", "k", "m", "t"]
_RESERVED = set(NUMBERS) | set("the a that and in is has have does to now how many says plus minus gives "
                               "she he her his there lived end".split())
_BRACKETS = ("()", "[]", "{}", "<>")


def _suffix_s(word):
    return word + ("es" if word.endswith(("s", "sh", "ch", "x", "z")) else "s")


class _Lexicon:
    def __init__(self, seed=12345, n_topics=8):
        rng, seen = random.Random(seed), set(_RESERVED)

        def word(nsyl):
            while True:
                w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(nsyl))
                if w not in seen:
                    seen.add(w)
                    return w
        self.topics = [dict(nouns=[word(rng.choice((1, 2, 2, 3))) for _ in range(48)],
                            verbs=[word(rng.choice((1, 2))) for _ in range(16)],
                            adjs=[word(rng.choice((1, 2, 3))) for _ in range(12)]) for _ in range(n_topics)]
        self.names = [(word(2).capitalize(), rng.choice(("she", "he"))) for _ in range(64)]
        self.places = [word(rng.choice((2, 3))).capitalize() for _ in range(24)]


@functools.lru_cache(maxsize=None)
def _zipf_weights(n, s):
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


def _zipf(rng, seq, s=1.0):
    """Pick from seq with probability proportional to 1/(rank+1)^s (rank = position)."""
    return rng.choices(seq, cum_weights=_zipf_weights(len(seq), s))[0]


def _story(lex, rng):
    topic = _zipf(rng, lex.topics, 0.7)
    cast = rng.sample(lex.names, rng.randint(2, 4))
    owned = {}                       # (name, noun) -> count, the document's "state"
    last = [cast[0]]                 # most recently mentioned character, for pronouns

    def pick(kind):
        src = topic if rng.random() < 0.85 else rng.choice(lex.topics)
        return _zipf(rng, src[kind], 0.9)

    def person():
        last[0] = _zipf(rng, cast, 1.0)
        return last[0][0]

    def noun_phrase(plural):
        words = ["the" if plural or rng.random() < 0.6 else "a"]
        if rng.random() < 0.4:
            words.append(pick("adjs"))
        noun = pick("nouns")
        words.append(_suffix_s(noun) if plural else noun)
        return " ".join(words)

    def clause():                    # subject + agreeing verb + object
        r = rng.random()
        if r < 0.35:
            subj, plural = person(), False
        elif r < 0.5:
            subj, plural = last[0][1], False
        else:
            plural = rng.random() < 0.5
            subj = noun_phrase(plural)
            if rng.random() < 0.3:   # relative clause between subject and verb
                subj += f" that {person()} {_suffix_s(pick('verbs'))}"
        verb = pick("verbs")
        text = f"{subj} {verb if plural else _suffix_s(verb)} {noun_phrase(rng.random() < 0.4)}"
        return text + (f" in {rng.choice(lex.places)}" if rng.random() < 0.1 else "")

    def brackets(depth):
        items = []
        for _ in range(rng.randint(1, 3)):
            if depth < 3 and rng.random() < 0.4:
                o, c = rng.choice(_BRACKETS)
                items.append(f"{o} {brackets(depth + 1)} {c}")
            else:
                items.append(pick("nouns"))
        return " ".join(items)

    def have(name, noun, n):
        return f"{name} has {NUMBERS[n]} {noun if n == 1 else _suffix_s(noun)}"

    names = [c[0] for c in cast]
    out = [f"in {rng.choice(lex.places)} there lived {', '.join(names[:-1])} and {names[-1]}."]
    for _ in range(rng.randint(6, 14)):
        r = rng.random()
        if r < 0.32:
            out.append(clause() + ".")
        elif r < 0.47:
            name, noun, n = person(), pick("nouns"), rng.randint(2, 12)
            owned[(name, noun)] = n
            out.append(have(name, noun, n) + ".")
        elif r < 0.57 and owned:
            (name, noun), n = rng.choice(sorted(owned.items()))
            other = rng.choice([c for c in names if c != name])
            if n >= 2:
                k = rng.randint(1, n - 1)
                owned[(name, noun)] = n - k
                owned[(other, noun)] = owned.get((other, noun), 0) + k
                if owned[(other, noun)] > 20:
                    del owned[(other, noun)]
                else:
                    out.append(f"{name} gives {NUMBERS[k]} {noun if k == 1 else _suffix_s(noun)} to {other}.")
                    if rng.random() < 0.5:
                        out.append(f"now {have(name, noun, n - k)}.")
        elif r < 0.69 and owned:
            (name, noun), n = rng.choice(sorted(owned.items()))
            out.append(f"how many {_suffix_s(noun)} does {name} have? {have(name, noun, n)}.")
        elif r < 0.77:
            a, b = rng.randint(0, 10), rng.randint(0, 10)
            out.append(f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}." if rng.random() < 0.5 else
                       f"{NUMBERS[max(a, b)]} minus {NUMBERS[min(a, b)]} is {NUMBERS[abs(a - b)]}.")
        elif r < 0.84:
            o, c = rng.choice(_BRACKETS)
            out.append(f"{o} {brackets(1)} {c}")
        elif r < 0.93:
            out.append(f'{person()} says "{clause()}."')
        else:
            name, pron = person(), last[0][1]
            out.append(f"{name} is {pick('adjs')} and {pron} is {pick('adjs')}.")
    out.append("the end.")
    return "".join(s + ("\n" if rng.random() < 0.15 else " ") for s in out).strip()


def generate_corpus(n_bytes, seed):
    """Deterministic list of documents totalling at least n_bytes (ASCII)."""
    lex, rng = _Lexicon(), random.Random(seed)
    docs, total = [], 0
    while total < n_bytes:
        docs.append(_story(lex, rng))
        total += len(docs[-1]) + 1
    return docs


# ---------------------------------------------------------------------------
# Opt-in real data (AR_DATA). Never downloads anything.

def _take(docs, limit):
    """The leading documents of an iterable, totalling about `limit` characters."""
    out, total = [], 0
    for doc in docs:
        if total >= limit:
            break
        out.append(doc)
        total += len(doc)
    return out


def _split_tail(docs, max_bytes, val_bytes):
    """Hold out the last documents (about 10%, at most val_bytes) for validation."""
    cut, held, want = len(docs), 0, min(0.1 * sum(map(len, docs)), val_bytes)
    while cut > 1 and held < want:
        cut -= 1
        held += len(docs[cut])
    return _take(docs[:cut], max_bytes), docs[cut:]


def _read_documents(spec, max_bytes, val_bytes):
    """(train_docs, val_docs) from AR_DATA. A text file is split into paragraphs (blank
    lines); parquet shards give their `text` column, and the last shard is validation
    when there are several. Otherwise the last documents are held out."""
    if os.path.isfile(spec) and not spec.endswith(".parquet"):
        with open(spec, encoding="utf-8", errors="replace") as f:
            docs = [d.strip("\n") for d in re.split(r"\n\s*\n", f.read()) if d.strip()]
        return _split_tail(docs, max_bytes, val_bytes)
    files = sorted(glob.glob(os.path.join(spec, "*.parquet")) if os.path.isdir(spec) else glob.glob(spec))
    if not files:
        sys.exit(f"AR_DATA={spec!r}: not a text file and no parquet shards found")
    import pyarrow.parquet as pq

    def stream(paths):
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
                yield from filter(None, batch.column(0).to_pylist())
    if len(files) == 1:
        return _split_tail(_take(stream(files), max_bytes + val_bytes), max_bytes, val_bytes)
    return _take(stream(files[:-1]), max_bytes), _take(stream(files[-1:]), val_bytes)


# ---------------------------------------------------------------------------
# Byte-level BPE tokenizer. Text is pre-split into chunks (words with their
# leading space, numbers, punctuation runs, whitespace); merges never cross
# chunk boundaries. Ids 0..255 are bytes, then merges, then BOS (last id).

PRETOKENIZE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?_+| ?[^\s\w]+|\s+(?!\S)|\s+")


def _merge(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class Tokenizer:
    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: 256 + i for i, m in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.bos_id = len(self.vocab)
        self.vocab_size = self.bos_id + 1
        self._cache = {}

    @classmethod
    def train(cls, text, vocab_size):
        """Incremental BPE: pair counts are updated only for the words a merge touches,
        and a lazy max-heap picks the most frequent pair (ties: smallest pair)."""
        counts = Counter(PRETOKENIZE.findall(text))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())
        pair_count, where = defaultdict(int), defaultdict(set)
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_count[p] += freqs[wi]
                where[p].add(wi)
        heap = [(-c, p) for p, c in pair_count.items()]
        heapq.heapify(heap)
        merges = []
        while len(merges) < vocab_size - 257 and heap:
            negc, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -negc:
                continue                     # stale heap entry
            if -negc < 2:
                break
            new, changed = 256 + len(merges), set()
            merges.append(pair)
            for wi in where.pop(pair):
                w, f = words[wi], freqs[wi]
                nw = _merge(w, pair, new)
                if len(nw) == len(w):
                    continue
                for p in zip(w, w[1:]):
                    pair_count[p] -= f
                    changed.add(p)
                for p in zip(nw, nw[1:]):
                    pair_count[p] += f
                    where[p].add(wi)
                    changed.add(p)
                words[wi] = nw
            pair_count.pop(pair, None)
            changed.discard(pair)
            for p in changed:
                if pair_count[p] > 0:
                    heapq.heappush(heap, (-pair_count[p], p))
        return cls(merges)

    def _encode_chunk(self, chunk):
        ids = self._cache.get(chunk)
        if ids is None:
            ids = list(chunk.encode("utf-8"))
            while len(ids) > 1:
                best = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, math.inf))
                if best not in self.ranks:
                    break
                ids = _merge(ids, best, self.ranks[best])
            if len(self._cache) < 1_000_000:
                self._cache[chunk] = ids
        return ids

    def encode(self, text, bos=False):
        ids = [self.bos_id] if bos else []
        for chunk in PRETOKENIZE.findall(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def decode(self, ids):
        return b"".join(self.vocab[i] for i in ids if i != self.bos_id).decode("utf-8", errors="replace")

    def token_bytes(self):
        """UTF-8 byte length of every token; BOS counts 0 bytes."""
        return np.array([len(b) for b in self.vocab] + [0], dtype=np.int32)


# ---------------------------------------------------------------------------
# Cache: <AR_CACHE_DIR>/<source>-v<vocab>/{tokenizer.json,train.npy,meta.json} and the validation split
# apart, in <AR_CACHE_DIR>/heldout/<source>-v<vocab>/val.npy (a folder the training sandbox hides).
# Built once per node under an exclusive file lock; every file is written to a
# temp name and os.replace'd; meta.json is written last and marks completion.

def cache_root():
    return os.path.expanduser(os.environ.get("AR_CACHE_DIR") or "~/.cache/ar-ray/gpt")


def heldout_dir(d=None):
    """Where the validation split of the cache `d` lives: <root>/heldout/<name of d>."""
    d = d or cache_dir()
    return os.path.join(os.path.dirname(d), "heldout", os.path.basename(d))


def _retire_old_layout(root):
    """Caches built before the split moved: their val.npy goes to heldout/ (else a run could still read it)."""
    for old in glob.glob(os.path.join(root, "*", "val.npy")):
        name = os.path.basename(os.path.dirname(old))
        if name == "heldout":
            continue
        try:
            os.makedirs(os.path.join(root, "heldout", name), exist_ok=True)
            os.replace(old, os.path.join(root, "heldout", name, "val.npy"))
        except OSError:
            pass  # read-only here (a training run): setup moves it


def cache_dir():
    root = cache_root()
    spec = os.environ.get("AR_DATA")
    if spec:
        paths = sorted(glob.glob(os.path.join(spec, "*.parquet"))) if os.path.isdir(spec) else sorted(glob.glob(spec))
        ident = [(os.path.realpath(p), os.path.getsize(p), int(os.path.getmtime(p))) for p in paths] or [spec]
        key = "data-" + hashlib.sha1(repr((ident, PRESET["max_data_mb"])).encode()).hexdigest()[:12]
    else:
        key = f"builtin{CORPUS_VERSION}-{PRESET['corpus_mb']}mb"
    return os.path.join(root, f"{key}-v{PRESET['vocab_size']}")


def _atomic_write(path, write):
    """write(f) into a temp file in the same directory, then rename it over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _tokenize_docs(tok, docs):
    """BOS + tokens of every document, concatenated (flushed to numpy every ~1M tokens)."""
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    parts, ids = [], []
    for doc in docs:
        ids.extend(tok.encode(doc, bos=True))
        if len(ids) > 2**20:
            parts.append(np.array(ids, dtype=dtype))
            ids = []
    return np.concatenate(parts + [np.array(ids, dtype=dtype)])


def ensure_cache(verbose=False):
    """Build the cache if missing (safe under concurrency). Returns its directory."""
    d = cache_dir()
    if os.path.exists(os.path.join(d, "meta.json")):
        return d
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(d, "meta.json")):
            return d                                      # another process built it meanwhile
        t0, log = time.time(), (print if verbose else lambda *a: None)
        val_bytes = EVAL_TOKENS * 5 + 100_000             # comfortably more text than the eval needs
        if os.environ.get("AR_DATA"):
            train_docs, val_docs = _read_documents(os.environ["AR_DATA"], PRESET["max_data_mb"] * 2**20, val_bytes)
        else:
            train_docs = generate_corpus(PRESET["corpus_mb"] * 2**20, TRAIN_SEED)
            val_docs = generate_corpus(val_bytes, VAL_SEED)
        log(f"documents: {len(train_docs)} train, {len(val_docs)} val ({time.time() - t0:.1f}s)")
        sample = _take(train_docs, PRESET["tokenizer_sample_mb"] * 2**20)  # tokenizer trains on a prefix
        tok = Tokenizer.train("\n\n".join(sample), PRESET["vocab_size"])
        log(f"tokenizer: {tok.vocab_size} tokens ({time.time() - t0:.1f}s)")
        meta = dict(source=os.environ.get("AR_DATA") or "builtin", vocab_size=tok.vocab_size)
        os.makedirs(heldout_dir(d), exist_ok=True)
        for split, docs in (("train", train_docs), ("val", val_docs)):
            arr = _tokenize_docs(tok, docs)
            where = heldout_dir(d) if split == "val" else d
            _atomic_write(os.path.join(where, f"{split}.npy"), lambda f, arr=arr: np.save(f, arr))
            meta[f"{split}_tokens"] = len(arr)
        _atomic_write(os.path.join(d, "tokenizer.json"), lambda f: f.write(json.dumps({"merges": tok.merges}).encode()))
        meta["build_seconds"] = round(time.time() - t0, 2)
        _atomic_write(os.path.join(d, "meta.json"), lambda f: f.write(json.dumps(meta).encode()))
        log(f"cache: {d} {meta}")
    return d


def load_tokenizer():
    with open(os.path.join(ensure_cache(), "tokenizer.json")) as f:
        return Tokenizer(json.load(f)["merges"])


def load_tokens(split):
    d = ensure_cache()
    if split != "val":
        return np.load(os.path.join(d, f"{split}.npy"), mmap_mode="r")
    if not os.path.exists(os.path.join(heldout_dir(d), "val.npy")):
        _retire_old_layout(os.path.dirname(d))  # a cache from before the split moved, used without setup
    try:
        return np.load(os.path.join(heldout_dir(d), "val.npy"), mmap_mode="r")
    except (FileNotFoundError, PermissionError):
        sys.exit(f"the validation split ({heldout_dir(d)}) is not readable here: ar-ray hides it from training "
                 "runs. End train.py with prepare.save_model(model, device); the trusted evaluation scores it")


def vocab_size():
    with open(os.path.join(ensure_cache(), "meta.json")) as f:
        return json.load(f)["vocab_size"]


# ---------------------------------------------------------------------------
# Dataloader: random windows of SEQ_LEN+1 tokens from the training stream only.

def train_batches(batch_size, device="cpu", seed=None, seq_len=SEQ_LEN):
    """Yield (inputs, targets) int64 tensors of shape (batch_size, seq_len), forever."""
    data = load_tokens("train")
    rng = np.random.default_rng(int(os.environ.get("AR_SEED", "42")) if seed is None else seed)
    offsets = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, len(data) - seq_len - 1, size=(batch_size, 1))
        chunk = torch.from_numpy(data[starts + offsets].astype(np.int64))
        if device != "cpu":
            chunk = chunk.pin_memory().to(device, non_blocking=True)
        yield chunk[:, :-1], chunk[:, 1:]


# ---------------------------------------------------------------------------
# Evaluation (fixed; do not change).

class LookAheadError(RuntimeError):
    """The model's output at position t changes when tokens after t change: it sees the future it predicts."""


@torch.no_grad()
def causality_probe(forward, x, logits, n_tokens, device="cpu"):
    """Raise LookAheadError when a model's logits at positions before a cut depend on the tokens from the cut on:
    e.g. attention without its causal mask, which scores a near-perfect val_bpb by reading the next token.
    `logits`: forward(x) as the evaluation computed it (the pass that counts). forward runs once more, on x with
    every row changed from a cut of its own, drawn at random here (so a model cannot be causal just where a
    fixed cut would look): the tokens from the cut on are another row's (real text), or shifted ones when x has
    a single row. A model that looks ahead at a share f of the positions escapes with probability about
    (1 - f) ** rows."""
    rows, T = x.shape
    draw = random.SystemRandom()
    cuts = torch.tensor([draw.randrange(1, T) for _ in range(rows)], device=x.device)
    after = torch.arange(T, device=x.device)[None, :] >= cuts[:, None]
    other = x.roll(1, dims=0) if rows > 1 else (x + 1) % n_tokens
    x2 = torch.where(after, other, x)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(device == "cuda")):
        b = forward(x2).float()
    before = ~after[:, :, None]
    a = logits.float()
    diff = torch.where(before, (a - b).abs(), 0.0).amax().item()
    scale = torch.where(before, a.abs(), 0.0).amax().item()
    tolerance = (3e-2 if device == "cuda" else 1e-3) * max(1.0, scale)  # (bf16 rounding on GPUs)
    if not diff <= tolerance:
        raise LookAheadError(f"the model looks ahead: its outputs before a position changed by up to {diff:.3g} "
                             "when only the tokens from that position on changed (a causal model's cannot change); "
                             "check the attention mask (is_causal) and anything else that mixes positions")


def _validation(device):
    """(val rows as an int64 tensor on `device`, byte length of each token on `device`, number of rows)."""
    val = load_tokens("val")
    token_bytes = torch.from_numpy(load_tokenizer().token_bytes()).to(device)
    n_rows = min(EVAL_TOKENS, len(val) - 1) // SEQ_LEN
    data = torch.from_numpy(np.asarray(val[: n_rows * SEQ_LEN + 1], dtype=np.int64)).to(device)
    return data, token_bytes, n_rows


@torch.no_grad()
def _score(forward, data, token_bytes, n_rows, batch_size, device, probe_batch=0, fixed_batch=False):
    """(bits per byte, evaluated bytes) of `forward` on the validation rows, batch by batch; the causality
    probe runs on batch `probe_batch`, against the logits that count. `fixed_batch`: every call gets exactly
    batch_size rows (the last batch is padded with its first row; the padding is not scored)."""
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    offsets = torch.arange(SEQ_LEN + 1, device=device)
    for i, r0 in enumerate(range(0, n_rows, batch_size)):
        rows = torch.arange(r0, min(r0 + batch_size, n_rows), device=device)
        real = len(rows)
        if fixed_batch and real < batch_size:
            rows = torch.cat([rows, rows[:1].expand(batch_size - real)])
        chunk = data[rows[:, None] * SEQ_LEN + offsets]
        x, y = chunk[:, :-1], chunk[:real, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(device == "cuda")):
            logits = forward(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape \
                or logits.size(-1) < len(token_bytes):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"evaluate: expected logits (B, T, >={len(token_bytes)}), got {shape}")
        if i == probe_batch:
            causality_probe(forward, x, logits, len(token_bytes), device)
        logits = logits[:real]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        b = token_bytes[y.flatten()]
        nats += torch.where(b > 0, loss.double(), 0.0).sum()
        nbytes += b.sum()
    return (nats / (math.log(2) * nbytes)).item(), int(nbytes.item())


def _write_result(result):
    if os.environ.get("AR_RESULT_FILE"):
        _atomic_write(os.environ["AR_RESULT_FILE"], lambda f: f.write(json.dumps(result).encode()))


@torch.no_grad()
def evaluate_bpb(model, batch_size=16, device="cpu"):
    """Bits per byte of `model` on the pinned validation tokens, in this process (a run by hand; under ar-ray
    the trusted evaluation scores the file save_model() wrote instead, and the split is not readable here).

    model(x) must return logits of shape (B, T, V>=vocab) for int64 inputs x of
    shape (B, SEQ_LEN). The cross-entropy is computed here, in float32, from
    those logits; targets equal to BOS are excluded from both sums. The result
    is written to $AR_RESULT_FILE (JSON) when that variable is set."""
    data, token_bytes, n_rows = _validation(device)
    was_training = model.training
    model.eval()
    try:
        bpb, nbytes = _score(model, data, token_bytes, n_rows, batch_size, device)
    except LookAheadError as e:  # never a metric: the trainer reads this and records status `integrity`
        _write_result({"integrity": str(e)})
        print(f"INTEGRITY: {e}", flush=True)
        raise
    model.train(was_training)
    _write_result({"val_bpb": bpb, "eval_tokens": n_rows * SEQ_LEN, "eval_bytes": nbytes})
    return bpb


def save_model(model, device="cpu"):
    """Save `model` for the trusted evaluation: the ATen operations of one forward pass on a batch of the
    evaluation's shape, with its weights, to MODEL_FILE in the run dir (modelfile.py). A model that cannot be
    recorded that way ends the run with a FAIL line saying why (it cannot be scored)."""
    import modelfile
    t0 = time.time()
    path = os.path.join(os.environ.get("AR_RUN_DIR") or os.getcwd(), MODEL_FILE)
    example = torch.zeros((PRESET["eval_batch"], SEQ_LEN), dtype=torch.int64, device=device)
    try:
        ops, size = modelfile.save(model, example, path, autocast_dtype=torch.bfloat16 if device == "cuda" else None)
    except Exception as e:  # noqa: BLE001 (any failure: the run has no model to score, and says why)
        print(f"FAIL: the model could not be saved for the trusted evaluation ({type(e).__name__}: {e}); its "
              "forward must be a fixed sequence of PyTorch operations on the (batch, SEQ_LEN) token tensor", flush=True)
        sys.exit(1)
    print(f"model saved for the trusted evaluation: {path} ({ops} operations, {size / 2**20:.1f} MiB, "
          f"{time.time() - t0:.1f}s)", flush=True)
    return path


def serve_evaluation(run_dir):
    """`python prepare.py evaluate RUN_DIR`: the trusted evaluation. Started by the trainer while the run trains
    (trainers/evaluate.py): it loads the validation split and waits; on the line `go` on stdin it scores
    RUN_DIR/MODEL_FILE and prints the summary block (val_bpb first); on end of input it exits quietly.
    A model file that is refused, or that looks ahead, gets an `INTEGRITY:` line and no metric."""
    import modelfile
    device, _ = init_runtime()
    data, token_bytes, n_rows = _validation(device)
    print(f"evaluation ready: {n_rows} rows of {SEQ_LEN} tokens on {device} ({time.time() - T_IMPORT:.1f}s after "
          "start-up)", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 0
    t1 = time.time()
    path = os.path.join(run_dir, MODEL_FILE)
    try:
        graph = modelfile.load(path, device)
    except FileNotFoundError:
        print(f"FAIL: the run saved no model ({path} is missing): train.py must end with "
              "prepare.save_model(model, device), which the trusted evaluation scores", flush=True)
        return 1
    except modelfile.ModelFileError as e:
        print(f"INTEGRITY: the model file was refused: {e}", flush=True)
        return 1
    batch = PRESET["eval_batch"]
    try:  # the probe's batch is drawn here, unknown to whoever wrote the file
        bpb, nbytes = _score(graph, data, token_bytes, n_rows, batch, device,
                             probe_batch=secrets.randbelow(-(-n_rows // batch)), fixed_batch=True)
    except LookAheadError as e:
        print(f"INTEGRITY: {e}", flush=True)
        return 1
    print("---")
    print(f"val_bpb:          {bpb:.6f}")
    print(f"eval_tokens:      {n_rows * SEQ_LEN}")
    print(f"eval_bytes:       {nbytes}")
    print(f"eval_seconds:     {time.time() - t1:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["evaluate"]:
        if len(sys.argv) != 3:
            sys.exit("usage: python prepare.py evaluate RUN_DIR")
        code = serve_evaluation(sys.argv[2])
        sys.stdout.flush()
        os._exit(code)  # (torch's interpreter teardown would add ~1 s to the run's critical path)
    t0 = time.time()
    _retire_old_layout(cache_root())
    print(f"ready: {ensure_cache(verbose=True)} ({time.time() - t0:.1f}s)")
