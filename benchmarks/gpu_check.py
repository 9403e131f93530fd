"""GPU check, one script: (1) paper-shape training throughput, (2) the cpu preset trained on GPU.

Part 1 trains the ``paper`` preset model (CodeGen-350M shape, 16 x 2048 tokens per step, bf16
autocast) for ``--paper-steps`` steps on a freshly generated dataset and reports tokens/s, MFU
against the dense bf16 peak (989 TFLOP/s for H100/H200 SXM) and peak memory.
Part 2 trains the ``cpu`` preset model on the GPU for ``--budget`` seconds of wall clock, logging
every ``--log-every`` steps: tokens seen, program-token val loss, constrained-decoding accuracy
and diversity on 200 test specs.
Every record is one JSON line appended to ``--out``.

    python benchmarks/gpu_check.py --out gpu.jsonl [--budget 240] [--paper-steps 200]
    python benchmarks/gpu_check.py --out tiny.jsonl --tiny      # CPU smoke of the script itself
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import karel
from model.config import preset
from model.data import make_stream, tokenize
from model.decode import generate
from model.metrics import generation_metrics, perplexity
from model.optim import make_optimizer
from model.train import resolve_device, train_step
from model.transformer import Transformer

PEAK_BF16 = 989e12


def emit(out, record):
    record = {"time": time.time(), **record}
    print(json.dumps(record), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(m, t, train_samples, compile_model):
    device = resolve_device(t)
    torch.manual_seed(t.seed)
    model = Transformer(m).to(device).train()
    opt = make_optimizer(model, t)
    ids, lengths = tokenize(train_samples, karel.Vocab())
    blocks = make_stream(ids, lengths, t)
    fwd = torch.compile(model) if compile_model else model
    return device, model, fwd, opt, blocks


def paper_throughput(args, train_samples):
    m, t = preset("smoke" if args.tiny else "paper", train={"micro_batch": args.micro} if args.micro else {})
    device, model, fwd, opt, blocks = setup(m, t, train_samples, args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, warm = args.paper_steps, min(10, max(args.paper_steps // 5, 1))
    for step in range(steps):
        if step == warm:
            sync(device)
            t0 = time.perf_counter()
        loss, _ = train_step(fwd, opt, blocks, t, step, device)
        if step % 50 == 0:
            emit(args.out, {"part": "paper", "step": step, "loss": float(loss)})
    sync(device)
    seconds = time.perf_counter() - t0
    tok_s = (steps - warm) * t.tokens_per_step / seconds
    flops = m.flops_per_token(t.block_len) * tok_s
    emit(args.out, {
        "part": "paper_summary", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "params": sum(p.numel() for p in model.parameters()), "steps": steps, "timed_steps": steps - warm,
        "tokens_per_step": t.tokens_per_step, "micro_batch": t.micro_batch or t.batch_size,
        "compile": args.compile, "tokens_per_s": tok_s, "tflops": flops / 1e12, "mfu": flops / PEAK_BF16,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "final_loss": float(loss),
    })
    del model, fwd, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_preset_on_gpu(args, train_samples, test, val):
    over = {"loss_on": "program"} if args.program_loss else {}
    if args.steps:
        over["steps"] = args.steps
    m, t = preset("smoke" if args.tiny else "cpu", train=over)
    device, model, fwd, opt, blocks = setup(m, t, train_samples, args.compile)
    vocab = karel.Vocab()
    start, step, seen = time.perf_counter(), 0, 0

    def evaluate():
        gen = generate(model, test, vocab, "constrained", batch_size=200)
        g = generation_metrics(gen, test, vocab)
        ppl = perplexity(model, val, vocab, batch_size=50)
        model.train()
        emit(args.out, {
            "part": "cpu_preset", "step": step, "tokens_seen": seen, "elapsed_s": time.perf_counter() - start,
            "program_loss": math.log(ppl["ppl_program"]), "all_loss": math.log(ppl["ppl_all"]),
            "acc_spec": g["acc_spec"], "acc_all": g["acc_all"], "diversity": g["diversity"],
            "gen_len_mean": g["gen_len_mean"],
        })

    evaluate()
    while time.perf_counter() - start < args.budget and step < t.steps:
        train_step(fwd, opt, blocks, t, step, device)
        step += 1
        seen += t.tokens_per_step
        if step % args.log_every == 0:
            evaluate()
    evaluate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=240.0, help="seconds of wall clock for part 2")
    ap.add_argument("--paper-steps", type=int, default=200)
    ap.add_argument("--micro", type=int, default=0, help="micro-batch for the paper shape (0 = 16)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--steps", type=int, default=0, help="override the cpu preset's schedule length")
    ap.add_argument("--n-train", type=int, default=100_000, help="programs generated for training")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--program-loss", action="store_true", help="part 2: loss on program tokens only")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="smoke shapes and a tiny dataset (CPU test)")
    args = ap.parse_args()
    if args.tiny:
        args.n_train, args.paper_steps = min(args.n_train, 400), min(args.paper_steps, 3)
        args.log_every = min(args.log_every, 2)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        karel.generate_dataset(karel.DataConfig(n_train_generated=args.n_train, n_val=200, n_test=200),
                               f"{tmp}/d", workers=args.workers)
        train_samples = karel.load_split(f"{tmp}/d", "train")
        test, val = karel.load_split(f"{tmp}/d", "test"), karel.load_split(f"{tmp}/d", "val")
    emit(args.out, {"part": "data", "train_programs": len(train_samples), "seconds": time.perf_counter() - t0,
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__})
    if not args.skip_paper:
        paper_throughput(args, train_samples)
    cpu_preset_on_gpu(args, train_samples, test, val)


if __name__ == "__main__":
    main()
