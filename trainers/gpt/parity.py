"""
Check that a fast path (GPU, bf16 autocast, torch.compile) trains like the plain float32 CPU path
(a helper for humans and for the GPU check; the engine never runs it).

    python parity.py --device cuda --dtype bf16 --compile     # the GPU preset's path against the CPU's
    python parity.py --device cpu --dtype bf16                # bf16 autocast on CPU

Builds the GPT of train.py twice from the same seed and trains both on the same batches: once in
float32, eager, on CPU (the reference), once as asked. Two checks, each with its tolerance; exit 1
when either fails:
- same weights: the reference's trained weights give the same loss both ways on held-out batches
  (the model computes the same function; bf16 rounding only);
- training curve: the mean loss over the last half of the steps agrees (the optimizer behaves the
  same; single steps are compared only by eye, as two runs drift apart chaotically).

The data is prepare.py's cache for the current preset (AR_PRESET, AR_CACHE_DIR, ...).
"""
import argparse
import itertools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import prepare  # noqa: E402
import train  # noqa: E402


def build(device, depth, seq_len, seed, lr_scale):
    torch.manual_seed(seed)
    model = train.GPT(prepare.vocab_size(), depth, seq_len)  # built on CPU: every run starts from the same weights
    model.to(device)
    optimizers = train.build_optimizers(model)
    for opt in optimizers:  # gentle steps keep the two runs' trajectories close enough to compare
        for group in opt.param_groups:
            group["lr"] *= lr_scale
    optimizers[1].param_groups[0]["momentum"] = 0.85  # train.py's first steps
    return model, optimizers


def fast(model, device, dtype, compile_):
    """A loss function running the model the way asked: (x, y) -> loss."""
    fwd = torch.compile(model, dynamic=False) if compile_ else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=(dtype == "bf16"))

    def loss(x, y):
        with autocast:
            return fwd(x, y)
    return loss


def train_run(device, dtype, compile_, args):
    """Per-step training losses of train.py's model and optimizers, and the trained model."""
    model, optimizers = build(device, args.depth, args.seq_len, args.seed, args.lr_scale)
    loss_fn = fast(model, device, dtype, compile_)
    batches = prepare.train_batches(args.batch, device=device, seed=args.seed, seq_len=args.seq_len)
    out, t0 = [], time.time()
    for _ in range(args.steps):
        loss = loss_fn(*next(batches))
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out, model, time.time() - t0


@torch.no_grad()
def same_weights_losses(weights, device, dtype, compile_, args, n=4):
    """Loss of the given weights on n held-out batches, in float32 on CPU and the way asked."""
    ref, _ = build("cpu", args.depth, args.seq_len, args.seed, args.lr_scale)
    ref.load_state_dict(weights)
    got, _ = build(device, args.depth, args.seq_len, args.seed, args.lr_scale)
    got.load_state_dict(weights)
    got_fn = fast(got, device, dtype, compile_)
    pairs = []
    for x, y in itertools.islice(prepare.train_batches(args.batch, seed=args.seed + 1, seq_len=args.seq_len), n):
        pairs.append((ref(x, y).item(), got_fn(x.to(device), y.to(device)).item()))
    return pairs


def rel(a, b):
    return abs(a - b) / abs(a)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as train.py does on CUDA)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-scale", type=float, default=0.25, help="multiplies train.py's learning rates")
    ap.add_argument("--tol-forward", type=float, default=0.01, help="largest relative loss difference, same weights")
    ap.add_argument("--tol-curve", type=float, default=0.05,
                    help="largest relative difference of the mean loss over the last half of the steps")
    args = ap.parse_args(argv)
    if args.seq_len > prepare.SEQ_LEN:
        sys.exit(f"--seq-len {args.seq_len} is longer than the preset's context ({prepare.SEQ_LEN})")
    name = f"{args.device} {args.dtype}{' compiled' if args.compile else ''}"
    ref, ref_model, ref_s = train_run("cpu", "fp32", False, args)
    got, _, got_s = train_run(args.device, args.dtype, args.compile, args)
    print(f"step  cpu fp32    {name}")
    for i, (a, b) in enumerate(zip(ref, got)):
        print(f"{i:4d}  {a:.6f}  {b:.6f}")
    pairs = same_weights_losses(ref_model.state_dict(), args.device, args.dtype, args.compile, args)
    half = args.steps // 2
    forward = max(rel(a, b) for a, b in pairs)
    curve = rel(sum(ref[half:]) / len(ref[half:]), sum(got[half:]) / len(got[half:]))
    print(f"forward_rel_diff: {forward:.3e}  (the trained reference weights, {len(pairs)} held-out batches)")
    print(f"curve_rel_diff:   {curve:.3e}  (mean loss over steps {half}..{args.steps - 1})")
    print(f"seconds: reference {ref_s:.1f}, {name} {got_s:.1f}")
    fails = [f"{what} {d:.2%} > {tol:.2%}" for what, d, tol in
             (("same-weights loss", forward, args.tol_forward), ("training curve", curve, args.tol_curve)) if d > tol]
    if fails:
        print(f"FAIL: the {name} path differs from the float32 CPU path: {'; '.join(fails)}")
        return 1
    print(f"OK: {name} matches the float32 CPU path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
