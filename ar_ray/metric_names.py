"""Which way a metric's name says it goes: losses and errors are minimized, accuracy-like scores maximized.

Read by `ar-ray init` (the direction it writes for a metric found in a log) and by `--metric NAME` (a new name
whose direction contradicts the target's is refused unless --direction says which way)."""

from __future__ import annotations

import re

# lower is better: losses, errors, perplexities
LOWER_METRICS = ("loss", "nll", "bpb", "bpc", "ppl", "perplexity", "rmse", "rmsle", "mse", "mae", "mape", "smape",
                 "logloss", "log_loss", "error", "err", "wer", "cer")
# higher is better; "r2 score", "f1_score" are names too
HIGHER_METRICS = ("accuracy", "acc", "roc_auc", "auroc", "auc", "r2", "f1", "bleu", "rouge", "precision", "recall",
                  "map", "score")


def _words(name: str) -> list[str]:
    """A name's words: val_auc -> [val, auc], valAccuracy -> [val, accuracy], eval/top1-acc -> [eval, top1, acc]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[^0-9a-z]+", spaced.lower()) if w]


def direction_of(name: str) -> str | None:
    """'min' when the name's words name only losses or errors, 'max' when only scores (accuracy, auc, r2, f1, bleu,
    precision, recall, score...), None when it names neither or both (loss_score) or is negated (neg_log_loss): unsure."""
    words = _words(name)
    if {"neg", "negative", "minus"} & set(words):  # sklearn's neg_log_loss, neg_mean_squared_error: negated
        return None
    pairs = {a + "_" + b for a, b in zip(words, words[1:])}  # roc_auc, log_loss written as two words
    found = set(words) | pairs
    lower, higher = bool(found & set(LOWER_METRICS)), bool(found & set(HIGHER_METRICS))
    if lower == higher:
        return None
    return "min" if lower else "max"
