"""Tests for ar_ray.code.answers and ar_ray.code.edits: parsing LLM answers, tolerant application, diffs, hashes, merges."""

import pytest

from ar_ray.code.answers import parse_answer
from ar_ray.code.codehash import edit_hash
from ar_ray.code.edits import (
    EditError,
    apply_edits,
    check_syntax,
    diff_stats,
    unified_diff,
)
from ar_ray.code.merge import rebase, three_way_merge

TRAIN = '''"""Tiny GPT-ish training script (autoresearch target)."""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# hyperparameters
LEARNING_RATE = 3e-4
BATCH_SIZE = 32
WEIGHT_DECAY = 0.1
N_LAYER = 4
N_EMBD = 128
DROPOUT = 0.0
TIME_BUDGET = 300  # seconds


class Block(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.ln = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        h = self.fc(self.ln(x))
        h = F.gelu(h)
        return x + self.proj(h)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, N_EMBD)
        self.blocks = nn.ModuleList([Block(N_EMBD) for _ in range(N_LAYER)])
        self.head = nn.Linear(N_EMBD, 256)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def train(get_batch):
    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                            weight_decay=WEIGHT_DECAY)
    start = time.time()
    step = 0
    while time.time() - start < TIME_BUDGET:
        x, y = get_batch(BATCH_SIZE)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, 256), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    print(f"val_bpb: {loss.item() / math.log(2):.4f}  # steps={step}")
    return loss.item()
'''

PREPARE = '''"""Data preparation (read-only)."""
VOCAB = 256


def get_batch(n):
    return n
'''

FILES = {"train.py": TRAIN, "prepare.py": PREPARE}
EDITABLE = {"train.py"}


def sr(search: str, replace: str, path: str = "train.py") -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def apply_answer(answer, files=FILES, editable=EDITABLE):
    return apply_edits(files, parse_answer(answer, files), editable)


# --------------------------------------------------------------------------- SEARCH/REPLACE


def test_single_block():
    new = apply_answer(sr("LEARNING_RATE = 3e-4\n", "LEARNING_RATE = 1e-3\n"))
    assert "LEARNING_RATE = 1e-3\n" in new["train.py"]
    assert "3e-4" not in new["train.py"]
    assert new["prepare.py"] == PREPARE
    assert new["train.py"].count("\n") == TRAIN.count("\n")


def test_input_not_mutated():
    files = dict(FILES)
    apply_answer(sr("BATCH_SIZE = 32\n", "BATCH_SIZE = 64\n"), files)
    assert files == FILES


def test_multiple_blocks_and_prose():
    answer = (
        "Wider model and a bit of dropout.\n\n"
        "### train.py\n```python\n"
        "<<<<<<< SEARCH\nN_EMBD = 128\nDROPOUT = 0.0\n=======\nN_EMBD = 192\nDROPOUT = 0.1\n>>>>>>> REPLACE\n"
        "```\n\nAnd in the block:\n\n```python\n"
        "<<<<<<< SEARCH\n        h = F.gelu(h)\n=======\n        h = F.gelu(h)\n"
        "        h = F.dropout(h, DROPOUT, self.training)\n>>>>>>> REPLACE\n```\n"
    )
    edits = parse_answer(answer, FILES)
    assert [e.path for e in edits] == ["train.py", "train.py"]
    assert all(e.kind == "replace" for e in edits)
    new = apply_edits(FILES, edits, EDITABLE)["train.py"]
    assert "N_EMBD = 192\nDROPOUT = 0.1\n" in new
    assert "        h = F.gelu(h)\n        h = F.dropout(h, DROPOUT, self.training)\n" in new


def test_two_files():
    answer = (
        "File: `train.py`\n```\n<<<<<<< SEARCH\nN_LAYER = 4\n=======\nN_LAYER = 6\n>>>>>>> REPLACE\n```\n"
        "`prepare.py`\n```\n<<<<<<< SEARCH\nVOCAB = 256\n=======\nVOCAB = 512\n>>>>>>> REPLACE\n```\n"
    )
    edits = parse_answer(answer, FILES)
    assert [e.path for e in edits] == ["train.py", "prepare.py"]
    new = apply_edits(FILES, edits, {"train.py", "prepare.py"})
    assert "N_LAYER = 6" in new["train.py"] and "VOCAB = 512" in new["prepare.py"]


def test_path_line_omitted_with_single_editable_file():
    answer = "<<<<<<< SEARCH\nBATCH_SIZE = 32\n=======\nBATCH_SIZE = 48\n>>>>>>> REPLACE\n"
    (e,) = parse_answer(answer, FILES, editable={"train.py"})
    assert e.path == "train.py"
    with pytest.raises(EditError, match="no file path"):
        parse_answer(answer, FILES)  # two files, no editable hint: ambiguous


def test_read_only_file_refused():
    with pytest.raises(EditError) as ei:
        apply_answer(sr("VOCAB = 256\n", "VOCAB = 1024\n", path="prepare.py"))
    msg = str(ei.value)
    assert "prepare.py is read-only" in msg and "train.py" in msg


def test_crlf_file_and_answer():
    files = {"train.py": TRAIN.replace("\n", "\r\n")}
    answer = sr("WEIGHT_DECAY = 0.1\n", "WEIGHT_DECAY = 0.05\n").replace("\n", "\r\n")
    new = apply_answer(answer, files)["train.py"]
    assert "WEIGHT_DECAY = 0.05\r\n" in new
    assert "\n" not in new.replace("\r\n", "")  # line endings stay CRLF throughout


def test_trailing_whitespace_ignored():
    files = {"train.py": TRAIN.replace("BATCH_SIZE = 32\n", "BATCH_SIZE = 32   \n")}
    new = apply_answer(sr("LEARNING_RATE = 3e-4  \nBATCH_SIZE = 32\n", "LEARNING_RATE = 1e-3\nBATCH_SIZE = 32\n"), files)
    assert "LEARNING_RATE = 1e-3\nBATCH_SIZE = 32\n" in new["train.py"]


def test_indentation_drift_search_less_indented():
    # the LLM dropped the method's indentation; replacement must be re-indented by +8
    search = "h = self.fc(self.ln(x))\nh = F.gelu(h)\n"
    replace = "h = self.fc(self.ln(x))\nh = F.relu(h) ** 2\n"
    new = apply_answer(sr(search, replace))["train.py"]
    assert "        h = self.fc(self.ln(x))\n        h = F.relu(h) ** 2\n" in new
    check_syntax({"train.py": new})


def test_indentation_drift_search_more_indented():
    search = "        LEARNING_RATE = 3e-4\n        BATCH_SIZE = 32\n"
    replace = "        LEARNING_RATE = 6e-4\n        BATCH_SIZE = 64\n"
    new = apply_answer(sr(search, replace))["train.py"]
    assert "\nLEARNING_RATE = 6e-4\nBATCH_SIZE = 64\n" in new
    check_syntax({"train.py": new})


def test_surrounding_blank_lines_trimmed():
    search = "\n\n    start = time.time()\n    step = 0\n\n\n"  # the file has no blank lines here
    new = apply_answer(sr(search, "\n\n    start = time.perf_counter()\n    step = 0\n\n\n"))["train.py"]
    assert "    start = time.perf_counter()\n    step = 0\n    while" in new


def test_search_not_matching_names_block_and_closest_lines():
    answer = sr("N_LAYER = 4\n", "N_LAYER = 8\n") + sr(
        "    x = self.emb(idx)\n    for blk in self.blocks:\n        x = blk(x)\n",
        "    x = self.emb(idx) * 2\n",
    )
    with pytest.raises(EditError) as ei:
        apply_answer(answer)
    msg = str(ei.value)
    assert "SEARCH block 2 for train.py did not match" in msg
    assert "closest lines are 40-42" in msg
    assert "for block in self.blocks:" in msg  # shows the real file lines
    assert "copy the lines exactly" in msg


def test_ambiguous_search():
    with pytest.raises(EditError) as ei:
        apply_answer(sr("        super().__init__()\n", "        super().__init__()  # x\n        pass\n"))
    msg = str(ei.value)
    assert "matches 2 places" in msg and "21" in msg and "34" in msg
    assert "more surrounding lines" in msg


def test_empty_search_creates_new_file():
    answer = sr("", "def lr_schedule(step):\n    return 1.0\n", path="sched.py")
    new = apply_edits(FILES, parse_answer(answer, FILES), {"train.py", "sched.py"})
    assert new["sched.py"] == "def lr_schedule(step):\n    return 1.0\n"
    with pytest.raises(EditError, match="empty SEARCH"):
        apply_answer(sr("", "X = 1\n"))  # existing non-empty file


def test_unchanged_edit_rejected():
    with pytest.raises(EditError, match="leaves the file unchanged"):
        apply_answer(sr("BATCH_SIZE = 32\n", "BATCH_SIZE = 32\n"))


def test_unterminated_block():
    with pytest.raises(EditError, match="REPLACE"):
        parse_answer("train.py\n<<<<<<< SEARCH\nBATCH_SIZE = 32\n=======\nBATCH_SIZE = 8\n", FILES)


# --------------------------------------------------------------------------- unified diff


def _diff_for(new_train: str) -> str:
    return unified_diff(FILES, {**FILES, "train.py": new_train})


def test_unified_diff_roundtrip_fenced():
    target = TRAIN.replace("N_LAYER = 4", "N_LAYER = 6").replace("step += 1", "step += 1\n        if step > 10**6:\n            break")
    answer = "Here is the patch:\n```diff\n" + _diff_for(target) + "```\nThanks."
    edits = parse_answer(answer, FILES)
    assert [e.kind for e in edits] == ["diff"]
    assert apply_edits(FILES, edits, EDITABLE)["train.py"] == target


def test_unified_diff_with_wrong_line_numbers_and_blank_context():
    answer = (
        "--- a/train.py\n+++ b/train.py\n"
        "@@ -100,4 +100,4 @@\n"
        " # hyperparameters\n-LEARNING_RATE = 3e-4\n+LEARNING_RATE = 2e-3\n BATCH_SIZE = 32\n"
        "@@ -3,3 +3,4 @@\n"
        "     def forward(self, x):\n         h = self.fc(self.ln(x))\n+        h = h * 1.0\n"
        "\n"  # an LLM-stripped blank context line, then trailing text
    )
    new = apply_answer(answer)["train.py"]
    assert "LEARNING_RATE = 2e-3" in new
    assert "        h = self.fc(self.ln(x))\n        h = h * 1.0\n        h = F.gelu(h)\n" in new


def test_unified_diff_whitespace_fuzz_and_bad_context():
    answer = (
        "```diff\n--- train.py\n+++ train.py\n@@ -47,2 +47,2 @@\n"
        "     model = Model()   \n-    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,\n"
        "+    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE * 2,\n```\n"
    )
    assert "lr=LEARNING_RATE * 2," in apply_answer(answer)["train.py"]
    bad = answer.replace("model = Model()", "model = GPT()")
    with pytest.raises(EditError, match="hunk 1 .* did not match any lines; the closest lines are 47-48"):
        apply_answer(bad)


@pytest.mark.parametrize("fenced", [False, True], ids=["bare", "fenced"])
def test_unified_diff_context_line_with_a_code_fence_keeps_the_rest_of_the_hunk(fenced):
    # a docstring holding a Markdown code fence: in the diff, " ```" is a context line, not the answer's fence
    doc = 'def usage():\n    """Run it like this:\n\n```\nrun()\n```\n    """\n\n\n'
    files = {**FILES, "train.py": TRAIN.replace("# hyperparameters\n", doc + "# hyperparameters\n")}
    target = files["train.py"].replace("run()\n", "run(fast=True)\n").replace(
        "LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3").replace("N_LAYER = 4", "N_LAYER = 6")
    diff = unified_diff(files, {**files, "train.py": target})
    assert "\n ```\n" in diff  # the fence lines are context of the hunk that edits run() and the hyperparameters
    answer = "DESCRIPTION: three changes\n\n" + ("```diff\n" + diff + "```\nDone." if fenced else diff)
    assert apply_edits(files, parse_answer(answer, files), EDITABLE)["train.py"] == target


def test_unified_diff_pure_insertion_uses_line_number():
    answer = "--- a/train.py\n+++ b/train.py\n@@ -16,0 +17,1 @@\n+GRAD_CLIP = 1.0\n"
    new = apply_answer(answer)["train.py"]
    assert "TIME_BUDGET = 300  # seconds\nGRAD_CLIP = 1.0\n\n\nclass Block" in new


# --------------------------------------------------------------------------- whole file


def test_whole_file_answer():
    target = TRAIN.replace("DROPOUT = 0.0", "DROPOUT = 0.2")
    answer = "Here is the updated file.\n\ntrain.py\n```python\n" + target + "```\n"
    (e,) = parse_answer(answer, FILES)
    assert e.kind == "whole" and e.path == "train.py"
    assert apply_edits(FILES, [e], EDITABLE)["train.py"] == target


def test_whole_file_without_path_single_editable_and_fragment_refused():
    target = TRAIN.replace("TIME_BUDGET = 300", "TIME_BUDGET = 290")
    (e,) = parse_answer("```python\n" + target + "```", FILES, editable={"train.py"})
    assert e.path == "train.py" and e.content == target
    with pytest.raises(EditError, match="fragment"):
        parse_answer("train.py\n```python\nLEARNING_RATE = 1e-3\n```\n", FILES)


@pytest.mark.parametrize(
    "answer",
    ["I think we should increase the learning rate.", "", "```\nsome output\n```"],
)
def test_garbage_answer(answer):
    with pytest.raises(EditError, match="no SEARCH/REPLACE block, unified diff or whole file"):
        parse_answer(answer, FILES)


# --------------------------------------------------------------------------- syntax


def test_check_syntax_reports_line():
    new = apply_answer(sr("    step = 0\n", "    step = (0\n"))
    with pytest.raises(EditError) as ei:
        check_syntax(new)
    msg = str(ei.value)
    assert "train.py line 51" in msg
    assert "step = (0" in msg
    check_syntax(FILES)  # the original compiles
    check_syntax({"notes.txt": "not python ("})  # only *.py files are compiled


def test_check_syntax_indentation_error():
    bad = TRAIN.replace("        step += 1\n", "          step += 1\n")
    with pytest.raises(EditError, match=r"train\.py line 59: IndentationError"):
        check_syntax({"train.py": bad})


# --------------------------------------------------------------------------- diffs / stats


def test_unified_diff_and_stats():
    new = {**FILES, "train.py": TRAIN.replace("N_LAYER = 4\n", "N_LAYER = 6\nN_HEAD = 4\n")}
    d = unified_diff(FILES, new)
    assert d.startswith("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -10,7 +10,8 @@\n")
    assert "-N_LAYER = 4\n+N_LAYER = 6\n+N_HEAD = 4\n" in d
    assert "prepare.py" not in d
    assert diff_stats(FILES, new) == (2, 1)
    assert unified_diff(FILES, dict(FILES)) == "" and diff_stats(FILES, FILES) == (0, 0)


def test_unified_diff_new_file_and_order():
    new = {**FILES, "a.py": "X = 1\n", "train.py": TRAIN + "# end\n"}
    d = unified_diff(FILES, new)
    assert d.index("a/a.py") < d.index("a/train.py")
    assert "--- /dev/null\n+++ b/a.py\n" in d
    assert diff_stats(FILES, new) == (2, 0)
    assert unified_diff(FILES, new) == d


# --------------------------------------------------------------------------- edit_hash


def test_edit_hash_cosmetic_variants_equal():
    base = {"train.py": TRAIN}
    real = TRAIN.replace("LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3")
    h = edit_hash(base, {"train.py": real})
    assert len(h) == 16 and int(h, 16) >= 0
    variants = [
        real.replace("LEARNING_RATE = 1e-3", "LEARNING_RATE = 1e-3  # faster"),
        real.replace("\n", "\r\n"),
        real.replace("BATCH_SIZE = 32", "BATCH_SIZE = 32    "),
        real.replace("# hyperparameters\n", "# hyper-parameters (tuned)\n\n"),
        real.replace("class Model", "\n\nclass Model"),
    ]
    for v in variants:
        assert edit_hash(base, {"train.py": v}) == h


def test_edit_hash_real_changes_differ():
    base = {"train.py": TRAIN}
    a = edit_hash(base, {"train.py": TRAIN.replace("LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3")})
    b = edit_hash(base, {"train.py": TRAIN.replace("LEARNING_RATE = 3e-4", "LEARNING_RATE = 2e-3")})
    # '#' inside a string is code, not a comment
    c = edit_hash(base, {"train.py": TRAIN.replace("# steps={step}", "# iters={step}")})
    d = edit_hash(base, {"train.py": TRAIN.replace("    step = 0\n", "        step = 0\n", 1)})  # broken code
    assert len({a, b, c, d}) == 4
    # path matters; comment-only edits elsewhere do not
    other = {"train.py": TRAIN, "model.py": TRAIN}
    e = edit_hash(other, {"train.py": TRAIN.replace("3e-4", "1e-3"), "model.py": TRAIN})
    f = edit_hash(other, {"train.py": TRAIN, "model.py": TRAIN.replace("3e-4", "1e-3")})
    g = edit_hash(other, {"train.py": TRAIN.replace("3e-4", "1e-3"), "model.py": TRAIN + "# note\n"})
    assert e != f and e == g


def test_edit_hash_unparseable_python_keeps_strings():
    base = {"train.py": "x = (\n"}
    h1 = edit_hash(base, {"train.py": "s = 'a # b'\nx = (\n"})
    h2 = edit_hash(base, {"train.py": "s = 'a # c'\nx = (\n"})
    h3 = edit_hash(base, {"train.py": "s = 'a # b'  # comment\nx = (\n"})
    assert h1 != h2 and h1 == h3


# --------------------------------------------------------------------------- merge / rebase


def test_three_way_merge_disjoint_changes_combine():
    ours = TRAIN.replace("LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3")
    theirs = TRAIN.replace("        h = F.gelu(h)\n", "        h = F.silu(h)\n")
    merged, conflicted = three_way_merge(TRAIN, ours, theirs)
    assert not conflicted
    assert "LEARNING_RATE = 1e-3" in merged and "F.silu(h)" in merged and "F.gelu" not in merged
    assert merged.count("\n") == TRAIN.count("\n")


def test_three_way_merge_adjacent_lines_combine():
    ours = TRAIN.replace("N_LAYER = 4", "N_LAYER = 6")
    theirs = TRAIN.replace("N_EMBD = 128", "N_EMBD = 256")
    merged, conflicted = three_way_merge(TRAIN, ours, theirs)
    assert not conflicted and "N_LAYER = 6\nN_EMBD = 256\n" in merged


def test_three_way_merge_same_change_once():
    ours = TRAIN.replace("step += 1\n", "step += 1\n        if loss.item() < 0.1:\n            break\n")
    merged, conflicted = three_way_merge(TRAIN, ours, ours)
    assert not conflicted and merged == ours
    theirs = ours.replace("DROPOUT = 0.0", "DROPOUT = 0.1")
    merged, conflicted = three_way_merge(TRAIN, ours, theirs)
    assert not conflicted and merged.count("if loss.item() < 0.1:") == 1 and "DROPOUT = 0.1" in merged


def test_three_way_merge_conflict_markers():
    ours = TRAIN.replace("BATCH_SIZE = 32", "BATCH_SIZE = 64")
    theirs = TRAIN.replace("BATCH_SIZE = 32", "BATCH_SIZE = 16")
    merged, conflicted = three_way_merge(TRAIN, ours, theirs)
    assert conflicted
    assert "<<<<<<< ours\nBATCH_SIZE = 64\n||||||| base\nBATCH_SIZE = 32\n=======\nBATCH_SIZE = 16\n>>>>>>> theirs\n" in merged
    assert "LEARNING_RATE = 3e-4\n<<<<<<< ours" in merged  # only the clashing line is in conflict


def test_rebase_onto_moved_baseline():
    parent = dict(FILES)
    child = {**FILES, "train.py": TRAIN.replace("        h = F.gelu(h)\n", "        h = F.gelu(h) * 1.5\n")}
    # the best moved on: new hyperparameters and an extra import shift every line
    moved = TRAIN.replace("import time\n", "import time\nimport os\n").replace("N_LAYER = 4", "N_LAYER = 8")
    new_base = {**FILES, "train.py": moved, "prepare.py": PREPARE + "SEED = 0\n"}
    files, conflicts = rebase(parent, child, new_base)
    assert conflicts == []
    assert "import os" in files["train.py"] and "N_LAYER = 8" in files["train.py"]
    assert "h = F.gelu(h) * 1.5" in files["train.py"]
    assert files["prepare.py"] == new_base["prepare.py"]
    check_syntax(files)

    clash = {**FILES, "train.py": TRAIN.replace("        h = F.gelu(h)\n", "        h = torch.tanh(h)\n")}
    files, conflicts = rebase(parent, child, clash)
    assert conflicts == ["train.py"] and "<<<<<<< ours" in files["train.py"]
