"""Tests for the default research target, trainers/gpt (prepare.py + train.py).

Everything runs on CPU against a temporary cache with a small vocabulary; train.py
is exercised as a real subprocess in a fresh directory, the way the engine runs it.
"""
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_targets import scoped_environ  # noqa: E402

TARGET = Path(__file__).resolve().parents[2] / "trainers" / "gpt"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
VOCAB = 512
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment shared by every test: tmp cache, small vocab, CPU preset."""
    values = {"AR_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "AR_VOCAB_SIZE": str(VOCAB),
              "AR_PRESET": "cpu", "AR_THREADS": "1"}  # 1 thread: robust on a busy machine
    yield from scoped_environ(values, ("AR_DATA", "AR_RESULT_FILE", "AR_BUDGET_TOKENS"))


@pytest.fixture(scope="module")
def prep(env):
    spec = importlib.util.spec_from_file_location("gpt_target_prepare", TARGET / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ensure_cache()
    return module


def run_train(tmp_path, env, extra=None, patch=None, timeout=120):
    """Run train.py the way the engine does: copies in a fresh dir, config via env."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    for name in ("train.py", "prepare.py", "program.md", "ar-ray.toml"):
        shutil.copy(TARGET / name, run_dir / name)
    if patch:
        src = (run_dir / "train.py").read_text()
        for name, value in patch.items():
            src, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", src, count=1, flags=re.M)
            assert n == 1, name
        (run_dir / "train.py").write_text(src)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    full_env.update(env, AR_RESULT_FILE=str(run_dir / "result.json"), **(extra or {}))
    proc = subprocess.run([sys.executable, "train.py"], cwd=run_dir, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc, run_dir


def parse_summary(stdout):
    block = stdout.split("\n---\n")[-1]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\S+)$", block, re.M)}


def test_target_declaration(prep):
    decl = tomllib.loads((TARGET / "ar-ray.toml").read_text())["target"]
    # the engine passes AR_BUDGET_SECONDS, so the declared budgets must be the presets' own
    assert decl["budget_seconds"] == prep.PRESETS["gpu"]["budget_seconds"] == 300
    assert decl["cpu_budget_seconds"] == prep.PRESETS["cpu"]["budget_seconds"] == 20
    assert decl["editable"] == ["train.py"] and decl["metric"] == "val_bpb" and decl["direction"] == "min"
    assert set(decl["readonly"]) == {"prepare.py", "modelfile.py", "program.md"} and "result_file" not in decl
    assert decl["evaluate"] == "{python} prepare.py evaluate {run_dir}" and decl["env"] == {"AR_TRUSTED_EVAL": "1"}
    assert re.search(decl["metric_pattern"], "---\nval_bpb:          1.234567\n", re.M).group(1) == "1.234567"
    for name in decl["editable"] + decl["readonly"]:
        assert (TARGET / name).is_file()


def test_corpus_is_deterministic(prep):
    a = prep.generate_corpus(60_000, seed=prep.TRAIN_SEED)
    assert a == prep.generate_corpus(60_000, seed=prep.TRAIN_SEED)
    assert a != prep.generate_corpus(60_000, seed=prep.TRAIN_SEED + 1)
    assert sum(len(d) + 1 for d in a) >= 60_000 and all(d.endswith("the end.") for d in a)


def test_tokenizer_round_trip(prep):
    tok = prep.load_tokenizer()
    assert tok.vocab_size == VOCAB
    texts = ["in Kishil there lived Mira and Tob. Mira has three birs.",
             "Grüße, naïve café — 日本語のテキスト 🎉🎉 ok?\n\n\tindent  two  spaces _under_score 1234567 'quote'",
             "", " ", "\n\n\n", "a\u200bb\r\nc"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.bos_id for i in ids)
    story = prep.generate_corpus(5_000, seed=99)[0]
    assert len(tok.encode(story)) < len(story.encode()) / 2     # merges are really used
    assert tok.decode(tok.encode(story, bos=True)) == story
    small = prep.Tokenizer.train("héllo wörld " * 50 + "日本語 " * 20, 300)
    assert 260 < small.vocab_size <= 300 and small.decode(small.encode("wörld 日本 héllo!")) == "wörld 日本 héllo!"


def test_evaluation_uniform_logits_is_exact(prep, tmp_path, monkeypatch):
    result_file = tmp_path / "result.json"
    monkeypatch.setenv("AR_RESULT_FILE", str(result_file))

    class Uniform(torch.nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.vocab = vocab

        def forward(self, x):
            return torch.zeros(*x.shape, self.vocab)

    # by hand: every non-BOS target costs ln(V) nats; bytes come from the token table
    n = min(prep.EVAL_TOKENS, len(prep.load_tokens("val")) - 1) // prep.SEQ_LEN * prep.SEQ_LEN
    targets = np.asarray(prep.load_tokens("val")[1:n + 1], dtype=np.int64)
    tok = prep.load_tokenizer()
    nbytes = int(sum(len(tok.vocab[t]) for t in targets if t != tok.bos_id))
    counted = int((targets != tok.bos_id).sum())
    assert 0 < counted < n                                        # some BOS targets were excluded
    for vocab in (VOCAB, 2 * VOCAB):                              # padded vocabularies are allowed
        bpb = prep.evaluate_bpb(Uniform(vocab), batch_size=32)
        assert bpb == pytest.approx(math.log2(vocab) * counted / nbytes, rel=1e-6)  # float32 ln(V)
    saved = json.loads(result_file.read_text())
    assert saved["val_bpb"] == bpb and saved["eval_tokens"] == n and saved["eval_bytes"] == nbytes


def test_dataloader_never_yields_validation_documents(prep, tmp_path, monkeypatch):
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    docs = [f"doc {i:05d} " + " ".join(words[(i * 7 + j) % 8] for j in range(20 + i % 30)) for i in range(600)]
    path = tmp_path / "marked.txt"
    path.write_text("\n\n".join(docs))
    monkeypatch.setenv("AR_DATA", str(path))
    tok = prep.load_tokenizer()
    val_ids = {int(m) for m in re.findall(r"doc (\d{5})", tok.decode(prep.load_tokens("val")))}
    assert val_ids and min(val_ids) > 500                       # the tail of the documents is held out
    seen = set()
    loader = prep.train_batches(32, seed=0, seq_len=64)
    for _ in range(60):
        x, y = next(loader)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], 1).tolist():
            seen.update(int(m) for m in re.findall(r"doc (\d{5})", tok.decode(row)))
    assert len(seen) > 300 and not (seen & val_ids)
    # built-in corpus: train and validation documents come from disjoint streams
    monkeypatch.delenv("AR_DATA")
    train = set(prep.generate_corpus(300_000, prep.TRAIN_SEED))
    assert not train & set(prep.generate_corpus(300_000, prep.VAL_SEED))


def test_concurrent_cache_build(tmp_path, env):
    full_env = {**os.environ, **env, "AR_CACHE_DIR": str(tmp_path / "c"), "AR_DATA": str(SHAKESPEARE)}
    procs = [subprocess.Popen([sys.executable, "prepare.py"], cwd=TARGET, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("tokenizer:" in o for o in outs) == 1              # exactly one process built it
    [cache] = [p for p in (tmp_path / "c").iterdir() if p.name != "heldout"]
    assert sorted(f.name for f in cache.iterdir() if not f.name.startswith(".")) == ["meta.json", "tokenizer.json", "train.npy"]
    assert [f.name for f in (tmp_path / "c" / "heldout" / cache.name).iterdir()] == ["val.npy"]  # the split, apart


def test_train_summary_block_and_result_file(tmp_path, env, prep):
    proc, run_dir = run_train(tmp_path, env, {"AR_BUDGET_SECONDS": "3", "AR_SEED": "7"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = parse_summary(proc.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert re.search(r"^val_bpb:          \d+\.\d{6}$", proc.stdout, re.M)
    result = json.loads((run_dir / "result.json").read_text())
    assert f"{result['val_bpb']:.6f}" == f"{summary['val_bpb']:.6f}"
    assert 0 < summary["val_bpb"] < math.log2(VOCAB) and summary["num_steps"] > 2
    assert 2.9 < summary["training_seconds"] < 15 and summary["depth"] == 2
    assert "seed 7" in proc.stdout


def test_more_training_and_bigger_model_beat_tiny(tmp_path, env, prep):
    """Token budgets make this hardware-independent: 2048 tokens per step on the CPU preset."""
    tiny, _ = run_train(tmp_path, env, {"AR_BUDGET_TOKENS": str(8 * 2048), "AR_DEPTH": "1"})
    big, _ = run_train(tmp_path, env, {"AR_BUDGET_TOKENS": str(40 * 2048), "AR_DEPTH": "2"})
    assert tiny.returncode == 0 and big.returncode == 0, tiny.stdout + big.stdout + big.stderr
    tiny_s, big_s = parse_summary(tiny.stdout), parse_summary(big.stdout)
    assert tiny_s["num_steps"] == 8 and big_s["num_steps"] == 40 and tiny_s["depth"] == 1
    assert big_s["val_bpb"] < tiny_s["val_bpb"] - 0.1, (tiny_s, big_s)


def test_divergence_fails_fast(tmp_path, env, prep):
    proc, _ = run_train(tmp_path, env, {"AR_BUDGET_SECONDS": "30"}, patch={"ROPE_BASE": 'float("nan")'})
    assert proc.returncode == 1
    assert "FAIL: loss diverged (nan) at step 0" in proc.stdout


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tinyshakespeare not available")
def test_real_text_data_via_ar_data(tmp_path, env):
    proc, run_dir = run_train(tmp_path, env, {"AR_DATA": str(SHAKESPEARE), "AR_BUDGET_TOKENS": str(20 * 2048)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bpb = parse_summary(proc.stdout)["val_bpb"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["val_bpb"] == pytest.approx(bpb, abs=1e-6)
    uniform = math.log2(VOCAB) * result["eval_tokens"] / result["eval_bytes"]   # ~4 bits per byte
    assert 0.5 < bpb < 0.8 * uniform, (bpb, uniform)
    assert any(p.name.startswith("data-") for p in Path(env["AR_CACHE_DIR"]).iterdir())


def test_parquet_shards_last_is_validation(prep, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        texts = [f"shard{s} text {i} " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(200)]
        pq.write_table(pa.table({"text": texts, "id": list(range(200))}), shards / f"shard_{s:05d}.parquet")
    monkeypatch.setenv("AR_DATA", str(shards))
    tok = prep.load_tokenizer()
    train_text, val_text = tok.decode(prep.load_tokens("train")), tok.decode(prep.load_tokens("val"))
    assert "shard0 text 199" in train_text and "shard1 text 0 " in train_text and "shard2" not in train_text
    assert "shard2 text 0 " in val_text and "shard0" not in val_text and "shard1" not in val_text


def run_parity(env, *args):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    full_env.update(env)
    proc = subprocess.run([sys.executable, str(TARGET / "parity.py"), "--device", "cpu", "--steps", "6", "--batch", "4", "--depth", "1",
                           "--seq-len", "128", *args], env=full_env, capture_output=True, text=True, timeout=600)
    diffs = {k: float(v) for k, v in re.findall(r"^(forward|curve)_rel_diff:\s+(\S+)", proc.stdout, re.M)}
    return proc, diffs


def test_parity_check_compiled_bf16_path_against_float32(env, prep):
    """The check the GPU runs (parity.py): exact against itself, bf16-close when compiled under bf16 autocast,
    and a failure when the tolerance is tighter than bf16 rounding."""
    same, diffs = run_parity(env, "--dtype", "fp32")
    assert same.returncode == 0 and diffs == {"forward": 0.0, "curve": 0.0}, same.stdout + same.stderr
    fast, diffs = run_parity(env, "--dtype", "bf16", "--compile")  # torch.compile traces train.py's model, as on CUDA
    assert fast.returncode == 0, fast.stdout + fast.stderr
    assert 0 < diffs["forward"] < 0.01 and diffs["curve"] < 0.05
    strict, _ = run_parity(env, "--dtype", "bf16", "--tol-forward", "0")
    assert strict.returncode == 1 and "FAIL: the cpu bf16 path differs" in strict.stdout and "same-weights" in strict.stdout


def test_peak_flops_by_gpu_name(prep, monkeypatch):
    monkeypatch.delenv("AR_PEAK_FLOPS", raising=False)
    assert prep.peak_flops("cpu") == 0.0
    assert prep.peak_flops("cuda", "NVIDIA H100 80GB HBM3") == 989.5e12
    assert prep.peak_flops("cuda", "NVIDIA H100 PCIe") == 756e12
    assert prep.peak_flops("cuda", "NVIDIA H200") == 989.5e12
    assert prep.peak_flops("cuda", "NVIDIA A100-SXM4-80GB") == 312e12
    assert prep.peak_flops("cuda", "NVIDIA L40S") == 362e12 and prep.peak_flops("cuda", "NVIDIA L4") == 121e12
    assert prep.peak_flops("cuda", "NVIDIA L40") == 181e12
    assert prep.peak_flops("cuda", "Some Future GPU") == 0.0  # unknown: MFU reads 0, not a wrong number
    monkeypatch.setenv("AR_PEAK_FLOPS", "1e15")
    assert prep.peak_flops("cuda", "Some Future GPU") == 1e15


def test_the_gpu_check_script_runs_end_to_end_on_cpu(env, prep, tmp_path):
    """bench/gpu_check.sh is what a session lent a GPU runs in one call of a 15-minute budget: a dry run on CPU
    (same steps, CPU preset, 3 s) keeps it from breaking unnoticed."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    full_env.update(env, OUT=str(tmp_path), PYTHON=sys.executable, GPU_CHECK_PRESET="cpu", GPU_CHECK_DEVICE="cpu",
                    GPU_CHECK_SECONDS="3", GPU_CHECK_PARITY="--steps 6 --batch 4 --depth 1 --seq-len 128")
    proc = subprocess.run(["bash", str(TARGET.parents[1] / "bench" / "gpu_check.sh")], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert proc.returncode == 0 and log == proc.stdout, proc.stdout + proc.stderr
    assert "prepare: " in log and "OK: cpu bf16 compiled matches the float32 CPU path" in log
    summary = parse_summary(log.split("result file:")[0])
    assert list(summary) == SUMMARY_KEYS and summary["val_bpb"] > 0
    assert re.search(r"^startup \S+s \| untimed first \d+ steps", log, re.M)
    assert json.loads(log.split("result file: ")[1].splitlines()[0])["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-6)


def test_the_causality_probe_stops_a_model_that_reads_the_next_token(prep, tmp_path, monkeypatch):
    """A model that reads the token it predicts scores near 0 bpb; the harness refuses to score it at all."""
    result_file = tmp_path / "result.json"
    monkeypatch.setenv("AR_RESULT_FILE", str(result_file))
    vocab = prep.vocab_size()

    class Cheater(torch.nn.Module):
        def forward(self, x):
            nxt = torch.roll(x, -1, dims=1)  # position t sees token t + 1
            return 20.0 * torch.nn.functional.one_hot(nxt, vocab).float()

    with pytest.raises(prep.LookAheadError, match="looks ahead"):
        prep.evaluate_bpb(Cheater(), batch_size=32)
    assert "looks ahead" in json.loads(result_file.read_text())["integrity"]


def test_the_bundled_train_py_without_its_causal_mask_is_recorded_integrity_never_ok(tmp_path, env, prep, monkeypatch):
    """The slip an LLM makes when it edits attention (is_causal=False) reached val_bpb 0.0066 against an honest 0.70
    and was kept; run the way the engine runs it, it is now status `integrity`, with no metric."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers_targets import candidate
    from ar_ray.target import load_target
    from trainers.sandbox import Sandbox
    from trainers.trainer import Trainer
    # (the budget through the target: AR_BUDGET_TOKENS in the trainer's environment is scrubbed, its name has TOKEN)
    target = load_target(TARGET, budget_tokens=4 * 2048, prestart=())
    leaky = target.read_editable()["train.py"].replace("is_causal=True", "is_causal=False")
    assert leaky != target.read_editable()["train.py"]
    trainer = Trainer(target, str(tmp_path / "work"), name="t", box=Sandbox(mode="none"))
    res = trainer.run(candidate(target, train=leaky))
    assert res.status == "integrity" and res.metric is None, (res.status, res.error_tail)
    assert "looks ahead" in res.error_tail and "val_bpb" not in res.metrics
