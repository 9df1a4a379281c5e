"""A noisy stand-in for a training run whose true objective is known (ar-ray's policy benchmark and tests).

Seven knobs matter (LEARNING_RATE, WIDTH, DEPTH, WEIGHT_DECAY, BATCH_SIZE, DROPOUT, HEADS: a bowl in log space
around an optimum), four
are placebos that change nothing (CLIP, BETA2, WARMUP_STEPS, LOG_EVERY). A run "trains" for RUN_SECONDS,
then prints val_bpb = truth + Gaussian noise of spread AR_NOISE (0.01), fresh per run (drawn from AR_SEED and the
code: a repeat of the same code with the same seed gives the same value), and the
truth beside it (true_bpb), so a benchmark can tell real wins from lucky ones.
"""
import math
import os
import random
import time

LEARNING_RATE = 0.001
WIDTH = 64
DEPTH = 2
WEIGHT_DECAY = 0.3
BATCH_SIZE = 256
DROPOUT = 0.2
HEADS = 2
CLIP = 1.0
BETA2 = 0.95
WARMUP_STEPS = 100
LOG_EVERY = 50


def truth(lr: float, width: int, depth: int, wd: float, batch: int, dropout: float, heads: int) -> float:
    """The noiseless metric: 1.0 at the optimum (lr 4e-3, width 256, depth 6, weight decay 0.05, batch 32,
    dropout 0.05, 8 heads); each knob a parabola in log space (depth: linear), so a step's gain is small near it."""
    return (1.0 + 0.005 * math.log2(max(lr, 1e-9) / 4e-3) ** 2 + 0.004 * math.log2(max(width, 1) / 256) ** 2
            + 0.001 * (depth - 6) ** 2 + 0.0025 * math.log2(max(wd, 1e-9) / 0.05) ** 2
            + 0.003 * math.log2(max(batch, 1) / 32) ** 2 + 0.003 * math.log2(max(dropout, 1e-9) / 0.05) ** 2
            + 0.002 * math.log2(max(heads, 1) / 8) ** 2)


if __name__ == "__main__":
    noise = float(os.environ.get("AR_NOISE", "0.01"))  # AR_NOISE=0: a deterministic target
    time.sleep(float(os.environ.get("AR_RUN_SECONDS", "0.5")))
    true_bpb = truth(LEARNING_RATE, WIDTH, DEPTH, WEIGHT_DECAY, BATCH_SIZE, DROPOUT, HEADS)
    knobs = (LEARNING_RATE, WIDTH, DEPTH, WEIGHT_DECAY, BATCH_SIZE, DROPOUT, HEADS, CLIP, BETA2, WARMUP_STEPS, LOG_EVERY)
    rng = random.Random(f"{os.environ.get('AR_SEED', '0')}-{knobs}")  # same code and seed: same value
    print(f"true_bpb: {true_bpb:.6f}")
    print(f"val_bpb: {true_bpb + rng.gauss(0.0, noise):.6f}")
