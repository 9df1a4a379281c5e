"""The trusted evaluation (trainers/evaluate.py) of the bundled GPT target, run the way the engine runs it:
real Trainer, real reaper, real bubblewrap, the real train.py on a tiny token budget (CPU preset).

The metric that decides comes from `prepare.py evaluate`, a child of its own that scores the graph file
the run saved; training never sees the validation split under bubblewrap. Each attack from issue 20 is
either caught with a clear status or its value is ignored (the recorded metric is the trusted one).
"""
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers_targets import candidate, marked_pids, new_mark, ppid_of, scoped_environ, wait_for  # noqa: E402

from ar_ray.target import TargetError, load_target  # noqa: E402
from trainers import evaluate  # noqa: E402
from trainers.sandbox import Sandbox, bwrap_problem  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402

TARGET = Path(__file__).resolve().parents[2] / "trainers" / "gpt"
TOKENS = 4 * 2048  # four optimizer steps of the CPU preset
SEED = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mark = new_mark()
    values = {"AR_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "AR_VOCAB_SIZE": "512", "AR_PRESET": "cpu",
              "AR_THREADS": "1", "AR_BUDGET_TOKENS": str(TOKENS), "AR_TEST_MARK": mark}  # (by hand)
    yield from scoped_environ(values, ("AR_DATA", "AR_RESULT_FILE", "AR_TRUSTED_EVAL"))


@pytest.fixture(scope="module")
def target(env):
    # (AR_BUDGET_TOKENS from the environment is scrubbed: TOKEN); no pre-started children: every process these
    # tests start must be gone after each run (tests/trainers/test_prestart.py runs the GPT target warm)
    return load_target(TARGET, budget_tokens=TOKENS, prestart=())


@pytest.fixture(scope="module")
def trainers(target, tmp_path_factory):
    """One trainer per sandbox mode (setup, the cache build, runs once)."""
    if bwrap_problem():
        pytest.fail(f"bubblewrap is needed here: {bwrap_problem()}")
    # the cache is built here, not by the trainers' setup: its per-node marker cannot tell this empty AR_CACHE_DIR
    # from an unset one (the fingerprint of an empty folder is that of no folder), and may skip it
    prep = subprocess.run([sys.executable, "prepare.py"], cwd=TARGET, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    root = tmp_path_factory.mktemp("work")
    return {mode: Trainer(target, str(root / mode), name=f"t-{mode}", box=Sandbox(mode=mode), grace_seconds=2.0)
            for mode in ("bwrap", "none")}


@pytest.fixture(scope="module")
def honest(trainers, target, env):
    """The unmodified target at SEED through the trainer, in both sandbox modes."""
    out = {mode: t.run(candidate(target, seed=SEED)) for mode, t in trainers.items()}
    assert not marked_pids(env["AR_TEST_MARK"])  # the evaluation children are gone with their runs
    return out


def patched(target, before_main="", end_of_main=""):
    """train.py with code inserted before main() runs and at its end."""
    src = target.read_editable()["train.py"]
    src = src.replace('if __name__ == "__main__":\n    main()', f'{before_main}\nif __name__ == "__main__":\n    main()\n')
    src = src.replace('    print(f"depth:            {depth}")\n', f'    print(f"depth:            {{depth}}")\n{end_of_main}')
    assert src != target.read_editable()["train.py"]
    return src


def test_the_unmodified_target_scores_what_it_scored_in_process(honest, env, tmp_path):
    """Parity: same seed, same number. The in-process path (a run by hand) is the evaluation as it was before the
    trusted step existed; the trusted evaluation of the saved graph gives the same val_bpb, in both modes."""
    run = tmp_path / "by-hand"
    run.mkdir()
    for name in ("train.py", "prepare.py", "modelfile.py"):
        shutil.copy(TARGET / name, run / name)
    full = {k: v for k, v in os.environ.items() if k != "AR_TRUSTED_EVAL"}
    proc = subprocess.run([sys.executable, "train.py"], cwd=run, capture_output=True, text=True, timeout=300,
                          env={**full, "AR_SEED": str(SEED), "AR_RESULT_FILE": str(run / "result.json")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_hand = re.search(r"^val_bpb:\s+(\S+)$", proc.stdout, re.M).group(1)
    for mode, res in honest.items():
        assert res.status == "ok", (mode, res.status, res.error_tail)
        assert f"{res.metric:.6f}" == by_hand, (mode, res.metric, by_hand)
        assert res.metrics["val_bpb"] == by_hand and int(res.metrics["eval_tokens"]) == 2**16
        assert res.phases["eval"] and 0 < res.phases["eval"] < 60
        log = Path(res.log_path).read_text()
        assert "model saved for the trusted evaluation" in log and evaluate.LOG_HEADER.strip() in log


def test_a_faked_result_file_printed_line_and_patched_evaluation_are_ignored(trainers, target, honest, env):
    """The candidate replaces prepare.evaluate_bpb and prints its number, rewrites $AR_RESULT_FILE at exit and
    prints a fake val_bpb line: none of it reaches the metric, which is the trusted evaluation's (the model is
    the honest one, so the number is the honest run's); the printed value stays in extra as printed_val_bpb."""
    train = patched(target, before_main="prepare.evaluate_bpb = lambda *a, **k: 0.1",
                    end_of_main='    print(f"val_bpb:          {prepare.evaluate_bpb(model):.6f}")\n'
                                '    open(os.environ["AR_RESULT_FILE"], "w").write(\'{"val_bpb": 0.1}\')\n')
    res = trainers["bwrap"].run(candidate(target, train=train, seed=SEED))
    assert res.status == "ok" and res.metric == honest["bwrap"].metric, (res.status, res.error_tail)
    assert res.metrics["printed_val_bpb"] == "0.100000" and res.metrics["val_bpb"] == honest["bwrap"].metrics["val_bpb"]
    assert not marked_pids(env["AR_TEST_MARK"])


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_skipping_the_saved_model_gives_no_metric_even_with_a_printed_one(trainers, target, env, mode):
    """A candidate that evaluates in-process with a patched function, rewrites the result file and saves no model
    (here without training at all, to be quick): no metric, in either mode, and the reason named."""
    train = ('import json, os, prepare\nprepare.evaluate_bpb = lambda *a, **k: 0.1\n'
             'print("---")\nprint(f"val_bpb:          {prepare.evaluate_bpb(None):.6f}")\n'
             'open(os.environ["AR_RESULT_FILE"], "w").write(json.dumps({"val_bpb": 0.1}))\n')
    res = trainers[mode].run(candidate(target, train=train, seed=SEED))
    assert res.status == "crash" and res.metric is None, (res.status, res.error_tail)
    assert "the run saved no model" in res.error_tail and "prepare.save_model" in res.error_tail
    assert res.metrics.get("printed_val_bpb") == "0.100000" and "val_bpb" not in res.metrics


READ_VAL = '''
import os, sys
import prepare
d = prepare.heldout_dir()
print("HELDOUT", sorted(os.listdir(d)) if os.path.isdir(d) else "missing", flush=True)
prepare.load_tokens("val")
print("READ THE VALIDATION SPLIT", flush=True)
'''


def test_training_cannot_read_the_validation_split_under_bubblewrap(trainers, target, env):
    res = trainers["bwrap"].run(candidate(target, train=READ_VAL))
    log = Path(res.log_path).read_text()
    assert "HELDOUT missing" in log and "READ THE VALIDATION SPLIT" not in log, log
    assert res.status == "crash" and res.metric is None
    assert "is not readable here" in res.error_tail and "save_model" in res.error_tail
    assert not marked_pids(env["AR_TEST_MARK"])  # the evaluation child waiting for it was discarded


def test_without_bubblewrap_the_split_is_readable_as_the_readme_says(trainers, target):
    """--sandbox none hides nothing (README: what it does not guarantee); the metric still comes from the
    trusted evaluation, but a candidate could train on the split there."""
    res = trainers["none"].run(candidate(target, train=READ_VAL + "print('val_bpb: 0.5')\n"))
    log = Path(res.log_path).read_text()
    assert "HELDOUT ['val.npy']" in log and "READ THE VALIDATION SPLIT" in log
    assert res.status == "crash" and "the run saved no model" in res.error_tail  # the printed 0.5 is not a metric


@pytest.fixture(scope="module")
def modelfile():
    """trainers/gpt/modelfile.py, loaded as the evaluation loads it."""
    from importlib import util
    spec = util.spec_from_file_location("gpt_modelfile", TARGET / "modelfile.py")
    mf = util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    return mf


def _ref(name):
    return {"ref": name}


@pytest.mark.parametrize("nodes, tensors, why", [
    ([{"name": "n0", "op": "aten.from_file.default", "args": ["/etc/passwd"], "kwargs": {}}], {},
     "not allowed in a model file"),
    ([{"name": "n0", "op": "aten.add_.Tensor", "args": [_ref("w:state"), 1.0], "kwargs": {}}],
     {"w:state": torch.zeros(3)}, "writes in place into a weight or the input"),
    ([{"name": "n0", "op": "aten.t.default", "args": [_ref("w:state")], "kwargs": {}},
      {"name": "n1", "op": "aten.mul_.Tensor", "args": [_ref("n0"), 2.0], "kwargs": {}}],
     {"w:state": torch.zeros(3, 3)}, "writes in place into a weight or the input"),
    ([{"name": "n0", "op": "aten.copy_.default", "args": [_ref("input"), _ref("input")], "kwargs": {}}], {},
     "writes in place into a weight or the input"),
    ([{"name": "n0", "op": "builtins.eval", "args": ["print(1)"], "kwargs": {}}], {}, "is not an ATen operator"),
    ([{"name": "n0", "op": "aten.add.Tensor", "args": [_ref("input"), "/etc/passwd"], "kwargs": {}}], {},
     "which takes no mode"),
    ([{"name": "n0", "op": "aten.relu.default", "args": [_ref("nowhere")], "kwargs": {}}], {},
     "not an earlier value"),
    ([{"name": "n0", "op": "aten.relu.default", "args": [{"pickle": "cos\nsystem\n"}], "kwargs": {}}], {},
     "is not one a model file may hold"),
])
def test_the_reader_refuses_what_a_model_file_may_not_hold(modelfile, tmp_path, nodes, tensors, why):
    path = tmp_path / "model.graph"
    modelfile._write(str(path), nodes, nodes[-1]["name"], tensors)
    with pytest.raises(modelfile.ModelFileError, match=why):
        modelfile.load(str(path))


def test_the_reader_refuses_a_link_and_a_fifo_and_garbage(modelfile, tmp_path):
    (tmp_path / "garbage").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(modelfile.ModelFileError, match="not JSON"):
        modelfile.load(str(tmp_path / "garbage"))
    os.symlink("/etc/passwd", tmp_path / "link")
    with pytest.raises(modelfile.ModelFileError, match="link or special file"):
        modelfile.load(str(tmp_path / "link"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(modelfile.ModelFileError, match="not a regular file"):
        modelfile.load(str(tmp_path / "fifo"))


def test_a_model_file_made_by_hand_to_read_the_split_is_refused_as_integrity(trainers, target, env):
    """A candidate that skips training and leaves a graph calling aten.from_file (which would read the split in
    the evaluation's sandbox): status integrity, no metric, the reason named."""
    train = '''
import json, os, prepare, modelfile
nodes = [{"name": "n0", "op": "aten.from_file.default", "args": [prepare.heldout_dir() + "/val.npy"], "kwargs": {}}]
modelfile._write("model.graph", nodes, "n0", {})
print("val_bpb: 0.01")
'''
    res = trainers["bwrap"].run(candidate(target, train=train))
    assert res.status == "integrity" and res.metric is None, (res.status, res.error_tail)
    assert "refused to score the run" in res.error_tail and "from_file" in res.error_tail
    assert res.metrics.get("printed_val_bpb") == "0.01"


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_discarded_or_killed_evaluation_leaves_no_process(trainers, target, env, mode, tmp_path):
    t = trainers[mode]
    t.setup()
    t.sandbox_note()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from trainers.trainer import child_env
    run_env = child_env(target, {"AR_RUN_DIR": str(run_dir), "AR_SEED": "0"})
    mark = env["AR_TEST_MARK"]
    for how in ("discard", "kill the reaper"):
        ev = evaluate.start(t, run_dir, run_env)
        wait_for(lambda: len(marked_pids(mark)) >= 2, what="the evaluation child")
        out = bytearray()
        wait_for(lambda: ev._read(out) and b"evaluation ready" in out, timeout=60, what="the evaluation to be ready")
        home = ev.home
        if how == "discard":
            ev.discard()
        else:  # Ray killing the trainer takes the reaper down with SIGKILL: the tree must still go
            os.kill(ev.proc.pid, signal.SIGKILL)
            ev.proc.wait()
        wait_for(lambda: not marked_pids(mark), timeout=20, what=f"no process left after: {how}")
        # (killed: its inner reaper, out of Ray's reach, removed the trusted copy once the tree was gone)
        wait_for(lambda: not home.exists(), timeout=10, what=f"the evaluation's home to go after: {how}")
        ev._cleanup()


def test_the_declaration_is_checked(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "train.py").write_text("print('val_bpb: 1')\n")
    (root / "ar-ray.toml").write_text('[target]\nevaluate = "{python} ev.py"\nresult_file = true\n')
    with pytest.raises(TargetError, match="evaluate and result_file = true exclude each other"):
        load_target(root)
    (root / "ar-ray.toml").write_text('[target]\nheldout = ["~/val"]\n')
    with pytest.raises(TargetError, match="declares no evaluate command"):
        load_target(root)
    (root / "ar-ray.toml").write_text('[target]\nevaluate = "{python} ev.py {nope}"\n')
    with pytest.raises(TargetError, match="unknown placeholder"):
        load_target(root)


def test_setup_moves_an_old_layout_split_out_of_sight(tmp_path, env):
    """A cache built before the split moved (val.npy beside train.npy) would stay readable: setup moves it."""
    old = tmp_path / "c" / "builtin1-4mb-v512"
    old.mkdir(parents=True)
    (old / "val.npy").write_bytes(b"old split")
    proc = subprocess.run([sys.executable, "-c", "import prepare; prepare._retire_old_layout(prepare.cache_root())"],
                          cwd=TARGET, env={**os.environ, "AR_CACHE_DIR": str(tmp_path / "c")}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (old / "val.npy").exists()
    assert (tmp_path / "c" / "heldout" / "builtin1-4mb-v512" / "val.npy").read_bytes() == b"old split"


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_killed_trainer_actor_takes_the_waiting_evaluation_with_it(target, trainers, env, mode, ray_local, tmp_path):
    """Ray SIGKILLs a trainer's worker (Ctrl-C, ray.kill, a lost driver): the run and its evaluation child, which
    waits for the run to end, both go; nothing is left in either mode."""
    ray = ray_local
    from trainers.actor import TrainerActor
    mark = new_mark()  # through the target's env: only the run's and the evaluation's processes carry it (Ray's
    target = load_target(TARGET, budget_tokens=TOKENS, prestart=(),  # own carry the module's, from os.environ)
                         env={**target.env, "AR_TEST_MARK": mark})
    actor = ray.remote(TrainerActor).options(max_concurrency=2, max_restarts=0, num_gpus=0) \
        .remote(target, str(tmp_path / "work"), "t-ray", grace_seconds=0.5, box=Sandbox(mode=mode))
    try:
        actor.run.remote(candidate(target, train="import time\nprint('training', flush=True)\ntime.sleep(600)\n"))

        def running(word):
            return [p for p in marked_pids(mark) if word in Path(f"/proc/{p}/cmdline").read_bytes()]
        wait_for(lambda: len(running(b"evaluate")) >= 2, 60, "the evaluation child and its reaper")
        # (and the run's own child: a trainer killed while a reaper is still starting leaves that reaper's tree,
        # the reaper's parent check races its start-up; reported, not this test's subject)
        wait_for(lambda: running(b"train.py\x00") and len(running(b"evaluate")) >= 2, 60, "the run's child")
        marked = marked_pids(mark)
        actor_pid = next(ppid_of(p) for p in marked if ppid_of(p) not in marked)
        assert actor_pid != os.getpid()
        [home] = [d for d in (os.readlink(f"/proc/{p}/cwd") for p in marked if ppid_of(p) == actor_pid)
                  if os.path.basename(d).startswith(evaluate.DIR_PREFIX)]  # the evaluation's trusted copy
        os.kill(actor_pid, signal.SIGKILL)

        def left():
            return [(p, ppid_of(p), Path(f"/proc/{p}/cmdline").read_bytes()[:150]) for p in marked_pids(mark)]
        try:
            wait_for(lambda: marked_pids(mark) == [], 20, "the run and its evaluation to go with their trainer")
        except AssertionError:
            raise AssertionError(f"left after the trainer {actor_pid} died (first marked: {marked}): {left()}")
        wait_for(lambda: not os.path.exists(home), 10, f"{home} to go with its trainer")
    finally:
        ray.kill(actor)
        for pid in marked_pids(mark):
            os.kill(pid, signal.SIGKILL)


def test_the_probe_catches_a_model_that_looks_ahead_only_in_the_second_half(trainers, env):
    """A cut fixed at the middle (the probe before this one) never saw a model that is causal up to the middle
    and reads the next token after it; random cuts per row do (it escapes 32 rows with probability 2^-32)."""
    from importlib import util
    spec = util.spec_from_file_location("gpt_prepare_probe", TARGET / "prepare.py")
    prep = util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    vocab = prep.vocab_size()

    class SecondHalfCheater(torch.nn.Module):
        def forward(self, x):
            nxt = torch.nn.functional.one_hot(torch.roll(x, -1, dims=1), vocab).float() * 20.0
            second = (torch.arange(x.size(1)) >= x.size(1) // 2)[None, :, None]
            return torch.where(second, nxt, torch.zeros_like(nxt))

    with pytest.raises(prep.LookAheadError, match="looks ahead"):
        prep.evaluate_bpb(SecondHalfCheater(), batch_size=32)

    class Honest(torch.nn.Module):  # causal: each position sees itself and the past only
        def forward(self, x):
            return torch.nn.functional.one_hot(x, vocab).float().cumsum(1)

    assert 0 < prep.evaluate_bpb(Honest(), batch_size=32) < 100


def test_writes_through_an_unannotated_alias_reach_neither_the_caller_nor_the_next_call(modelfile, tmp_path):
    """aten._unsafe_view aliases its input without saying so in its schema, so the in-place check cannot see a
    write through it: the graph runs on copies. Else a model could rewrite the evaluation's targets (they share
    storage with its input) or count its calls in a weight."""
    path = tmp_path / "model.graph"
    nodes = [{"name": "n0", "op": "aten._unsafe_view.default", "args": [_ref("input"), [2, 4]], "kwargs": {}},
             {"name": "n1", "op": "aten.zero_.default", "args": [_ref("n0")], "kwargs": {}},
             {"name": "n2", "op": "aten._unsafe_view.default", "args": [_ref("w:count"), [1]], "kwargs": {}},
             {"name": "n3", "op": "aten.add_.Tensor", "args": [_ref("n2"), 1.0], "kwargs": {}},
             {"name": "n4", "op": "aten.add.Tensor", "args": [_ref("n1"), _ref("n3")], "kwargs": {}}]
    modelfile._write(str(path), nodes, "n4", {"w:count": torch.zeros(1)})
    g = modelfile.load(str(path))
    x = torch.arange(8.0).reshape(2, 4)
    first, second = g(x), g(x)
    assert torch.equal(x, torch.arange(8.0).reshape(2, 4))  # the caller's tensor is untouched
    assert torch.equal(first, second) and first.eq(1.0).all()  # no count kept from one call to the next
