"""
train.py: a small modern GPT trained for a fixed budget; the file proposers edit.

Model: rotary embeddings, parameter-free RMSNorm, QK-norm, causal attention via
F.scaled_dot_product_attention with optional sliding-window layers, ReLU^2 or
SwiGLU MLP, untied embeddings, logit soft-capping, learnable residual scalars.
Optimizers: Muon (Newton-Schulz orthogonalized momentum) for the 2-D matrices
inside the blocks, AdamW for the embedding, the unembedding and the scalars.
Schedule: warmup / constant / warmdown on progress = elapsed / budget.

prepare.py (read-only) owns the data, the tokenizer, the context length, the
seed handling, the budget and the evaluation. Run: `python train.py`. Under ar-ray the
run ends by saving its model (prepare.save_model) and a trusted step computes val_bpb.
"""
import math
import os
import sys
import time

T_START = time.time()

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# ---------------------------------------------------------------------------
# Hyperparameters. Keep each a plain literal: tools perturb them by name.

# Model shape: width = DEPTH * ASPECT_RATIO rounded up to a multiple of HEAD_DIM.
DEPTH = 2                      # transformer blocks, CPU preset (env AR_DEPTH overrides)
GPU_DEPTH = 8                  # transformer blocks, GPU preset (env AR_DEPTH overrides)
ASPECT_RATIO = 64              # model width per block
HEAD_DIM = 64                  # channels per attention head
MLP_RATIO = 4                  # MLP hidden size = MLP_RATIO * width
USE_SWIGLU = False             # SwiGLU MLP (2/3 hidden, same params) instead of ReLU^2
USE_QK_NORM = True             # RMS-normalize queries and keys after rotary
WINDOW_PATTERN = "L"           # per-layer attention, cycled: L = full causal, S = sliding window
SHORT_WINDOW = 64              # tokens visible to S layers
ROPE_BASE = 10000.0            # rotary frequency base
LOGIT_SOFTCAP = 15.0           # logits = cap * tanh(logits / cap); 0 disables

# Optimization.
MATRIX_LR = 0.02               # Muon learning rate for block matrices
EMBEDDING_LR = 0.2             # AdamW lr, token embedding (scaled by (width/768)^-0.5)
UNEMBEDDING_LR = 0.004         # AdamW lr, output head (scaled by (width/768)^-0.5)
SCALAR_LR = 0.5                # AdamW lr, residual mixing scalars
MUON_MOMENTUM = 0.95           # final Muon momentum (warms up from 0.85)
MUON_MOMENTUM_WARMUP = 300     # steps to ramp Muon momentum
NS_STEPS = 5                   # Newton-Schulz iterations
WEIGHT_DECAY = 0.0             # decoupled weight decay on Muon matrices
ADAM_BETA1 = 0.8               # AdamW beta1
ADAM_BETA2 = 0.95              # AdamW beta2
WARMUP_FRAC = 0.0              # fraction of the budget for linear LR warmup
WARMDOWN_FRAC = 0.4            # fraction of the budget for the final linear decay
FINAL_LR_FRAC = 0.0            # LR multiplier at the end of warmdown

# Batch: TOTAL_BATCH_TOKENS per optimizer step, reached by gradient accumulation.
DEVICE_BATCH_SIZE = 8          # sequences per forward pass, CPU preset
TOTAL_BATCH_TOKENS = 2048      # tokens per optimizer step, CPU preset
GPU_DEVICE_BATCH_SIZE = 64     # sequences per forward pass, GPU preset
GPU_TOTAL_BATCH_TOKENS = 524288  # tokens per optimizer step, GPU preset


# ---------------------------------------------------------------------------
# Model

def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, width, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_q = nn.Linear(width, width, bias=False)
        self.c_k = nn.Linear(width, width, bias=False)
        self.c_v = nn.Linear(width, width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        q, k, v = (f(x).view(B, T, self.n_head, -1) for f in (self.c_q, self.c_k, self.c_v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if USE_QK_NORM:
            q, k = rms_norm(q), rms_norm(k)
        q, k, v = (t.to(v.dtype).transpose(1, 2) for t in (q, k, v))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        hidden = MLP_RATIO * width
        if USE_SWIGLU:
            hidden = (2 * hidden // 3 + 63) // 64 * 64
            self.c_gate = nn.Linear(width, hidden, bias=False)
        self.c_fc = nn.Linear(width, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        h = self.c_fc(x)
        h = F.silu(self.c_gate(x)) * h if USE_SWIGLU else F.relu(h).square()
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, width, n_head):
        super().__init__()
        self.attn = Attention(width, n_head)
        self.mlp = MLP(width)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(rms_norm(x), cos, sin, mask)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, seq_len):
        super().__init__()
        width = -(-depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
        self.width, self.n_head, self.depth = width, width // HEAD_DIM, depth
        self.wte = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width, self.n_head) for _ in range(depth))
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))   # scales the residual stream per block
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))     # mixes the embedding back in per block
        t = torch.arange(seq_len, dtype=torch.float32)
        inv_freq = ROPE_BASE ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
        freqs = torch.outer(t, inv_freq)[None, :, None, :]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        i = torch.arange(seq_len)
        band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < SHORT_WINDOW)
        self.register_buffer("band", band, persistent=False)
        self.windows = [WINDOW_PATTERN[j % len(WINDOW_PATTERN)] for j in range(depth)]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = 3 ** 0.5 * self.width ** -0.5
        for block in self.blocks:
            for name, p in block.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.zeros_(p)            # every block starts as the identity
                else:
                    nn.init.uniform_(p, -bound, bound)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            mask = self.band[:T, :T] if self.windows[i] == "S" and T > SHORT_WINDOW else None
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, mask)
        logits = self.lm_head(rms_norm(x)).float()
        if LOGIT_SOFTCAP > 0:
            logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def flops_per_token(self, seq_len):
        matrices = sum(p.numel() for p in self.blocks.parameters()) + self.lm_head.weight.numel()
        return 6 * matrices + 12 * self.depth * self.width * seq_len


# ---------------------------------------------------------------------------
# Muon: SGD-momentum whose update is replaced by the nearest orthogonal matrix,
# computed with a quintic Newton-Schulz iteration (stacked per shape).

def newton_schulz(G, steps):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, ns_steps, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                bufs = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
                for p, buf in zip(params, bufs):
                    buf.lerp_(p.grad, 1 - group["momentum"])
                nesterov = torch.stack([p.grad.lerp(buf, group["momentum"]) for p, buf in zip(params, bufs)])
                update = newton_schulz(nesterov, group["ns_steps"])
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                for p, u in zip(params, update.unbind(0)):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)


def build_optimizers(model):
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    scale = (model.width / 768) ** -0.5         # AdamW lrs were tuned at width 768
    adam_groups = [dict(params=[model.wte.weight], lr=EMBEDDING_LR * scale),
                   dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
                   dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR)]
    adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0,
                              fused=model.wte.weight.is_cuda)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_FRAC:
        return (progress + 1e-3) / WARMUP_FRAC
    if progress <= 1 - WARMDOWN_FRAC:
        return 1.0
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * (1 - progress) / WARMDOWN_FRAC


# ---------------------------------------------------------------------------
# Training

def main():
    device, seed = prepare.init_runtime()
    gpu = prepare.PRESET["name"] == "gpu"
    depth = int(os.environ.get("AR_DEPTH") or (GPU_DEPTH if gpu else DEPTH))
    device_batch = GPU_DEVICE_BATCH_SIZE if gpu else DEVICE_BATCH_SIZE
    total_batch = GPU_TOTAL_BATCH_TOKENS if gpu else TOTAL_BATCH_TOKENS
    seq_len = prepare.SEQ_LEN
    grad_accum = max(1, total_batch // (device_batch * seq_len))
    tokens_per_step = grad_accum * device_batch * seq_len
    budget_s, budget_tokens = prepare.get_budget()
    vocab_size = prepare.vocab_size()

    model = GPT(vocab_size, depth, seq_len).to(device)
    optimizers = build_optimizers(model)
    num_params = sum(p.numel() for p in model.parameters())
    fwd = torch.compile(model, dynamic=False) if device == "cuda" else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=(device == "cuda"))
    loader = prepare.train_batches(device_batch, device=device, seed=seed)
    print(f"preset {prepare.PRESET['name']} | device {device} | threads {torch.get_num_threads()} | seed {seed} | "
          f"depth {depth} width {model.width} heads {model.n_head} | params {num_params / 1e6:.2f}M | "
          f"vocab {vocab_size} seq {seq_len} | {tokens_per_step} tok/step (accum {grad_accum}) | "
          f"budget {f'{budget_s:.0f}s' if budget_s else f'{budget_tokens} tokens'}", flush=True)

    step, tokens, train_time, progress, next_log, smooth = 0, 0, 0.0, 0.0, 0.0, 0.0
    t_loop = time.time()
    diverge_bound = 3 * math.log(vocab_size)
    while progress < 1:
        t0 = time.time()
        lrm = lr_multiplier(progress)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        frac = min(step / MUON_MOMENTUM_WARMUP, 1.0)
        optimizers[1].param_groups[0]["momentum"] = (1 - frac) * 0.85 + frac * MUON_MOMENTUM
        for _ in range(grad_accum):
            x, y = next(loader)
            with autocast:
                loss = fwd(x, y)
            (loss / grad_accum).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if not math.isfinite(loss_value) or (step >= prepare.UNTIMED_STEPS and loss_value > diverge_bound):
            print(f"FAIL: loss diverged ({loss_value:.4g}) at step {step}", flush=True)
            sys.exit(1)
        step += 1
        tokens += tokens_per_step
        smooth = 0.9 * smooth + 0.1 * loss_value  # an EMA of the loss, debiased below
        if step > prepare.UNTIMED_STEPS:
            train_time += time.time() - t0
        elif step == prepare.UNTIMED_STEPS:
            print(f"startup {t_loop - T_START:.1f}s | untimed first {step} steps (compile, warm-up) "
                  f"{time.time() - t_loop:.1f}s", flush=True)
        progress = tokens / budget_tokens if budget_tokens else train_time / budget_s
        if progress >= next_log or step == 1:  # every 2 % of the budget: the curve the engine reads (--prune)
            next_log = progress + 0.02
            print(f"step {step:05d} | loss {smooth / (1 - 0.9 ** step):.4f} | lr x{lrm:.2f} | "
                  f"{tokens_per_step / (time.time() - t0):,.0f} tok/s | {100 * min(progress, 1):.1f}% done", flush=True)

    if prepare.TRUSTED_EVAL:  # under ar-ray: a trusted step scores the saved model; the val split is not readable here
        prepare.save_model(model, device)
    else:  # a run by hand: evaluate in this process
        val_bpb = prepare.evaluate_bpb(fwd, batch_size=device_batch, device=device)
        if not math.isfinite(val_bpb):
            print(f"FAIL: val_bpb is {val_bpb} (diverged)", flush=True)
            sys.exit(1)
    peak_flops = prepare.peak_flops(device)                      # dense bf16, by GPU model
    timed_tokens = tokens - min(step, prepare.UNTIMED_STEPS) * tokens_per_step
    mfu = 100 * model.flops_per_token(seq_len) * timed_tokens / train_time / peak_flops if peak_flops and train_time else 0.0
    peak_vram = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    print("---")
    if not prepare.TRUSTED_EVAL:
        print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {train_time:.1f}")
    print(f"total_seconds:    {time.time() - T_START:.1f}")
    print(f"peak_vram_mb:     {peak_vram:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {tokens / 1e6:.4g}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.4g}")
    print(f"depth:            {depth}")


if __name__ == "__main__":
    main()
