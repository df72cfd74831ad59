"""SAE training throughput: this project's loop against sae-lens's own trainer and a bare PyTorch TopK loop.

All three train a TopK SAE of the same shape (d_in, expansion, k, batch, Adam, same number of
steps) on the same in-memory activations, on CPU (or CUDA with --device cuda). Ours does everything
the product does (normalisation, geometric-median b_dec, AuxK with dead-latent tracking, unit-norm
decoder with parallel-gradient removal, grad clipping, LR schedule, held-out evaluation at the end);
sae-lens's SAETrainer runs its own loop (dead-feature tracking, AuxK, LR schedule); the bare loop is
encode → top-k → decode → MSE → Adam with nothing else. Goals: ours ≥ 1.0× sae-lens, ≥ 0.8× bare.

usage: python benchmarks/bench_sae.py [--d-in 256] [--tokens 400000] [--steps 100] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

import torch


def data(n_tokens: int, d_in: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(4 * d_in, d_in, generator=generator)
    codes = torch.rand(n_tokens, 4 * d_in, generator=generator).pow(8)  # sparse-ish positive codes
    return codes @ atoms / 10 + 1.0


def ours(tokens: torch.Tensor, args: argparse.Namespace) -> float:
    from sae_genomics_core.sae.train import SaeTrainingConfig, TensorSource, train_sae

    config = SaeTrainingConfig(
        expansion_factor=args.expansion,
        k=args.k,
        training_tokens=args.steps * args.batch,
        batch_size=args.batch,
        lr=3e-4,
        warmup_steps=10,
        log_every_steps=args.steps,
        state_every_steps=10**9,
        eval_tokens=8192,
        stats_tokens=8192,
        dead_window_tokens=100_000,
        device=args.device,
    )
    started = time.perf_counter()
    train_sae(TensorSource(tokens, 8192), config)
    return time.perf_counter() - started


def sae_lens_trainer(tokens: torch.Tensor, args: argparse.Namespace) -> float:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = tokens.shape[1]
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_in * args.expansion, k=args.k, device=args.device, dtype="float32"
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=3e-4,
        lr_end=3e-5,
        lr_warm_up_steps=10,
        device=args.device,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        save_final_checkpoint=False,
        dead_feature_window=100_000 // args.batch,
        feature_sampling_window=10**9,
    )
    train = tokens[8192:]

    def provider():
        while True:
            yield from train[torch.randperm(train.shape[0])].split(args.batch)

    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()
    return time.perf_counter() - started


def bare_loop(tokens: torch.Tensor, args: argparse.Namespace) -> float:
    d_in = tokens.shape[1]
    d_sae = d_in * args.expansion
    torch.manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, device=args.device) / d_in**0.5)
    W_dec = torch.nn.Parameter(W_enc.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=args.device))
    b_dec = torch.nn.Parameter(torch.zeros(d_in, device=args.device))
    optimizer = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=3e-4)
    train = tokens[8192:]
    started = time.perf_counter()
    step = 0
    while step < args.steps:
        for x in train[torch.randperm(train.shape[0])].split(args.batch):
            if step >= args.steps:
                break
            x = x.to(args.device)
            pre = (x - b_dec) @ W_enc + b_enc
            values, indices = pre.topk(args.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
            loss = (acts @ W_dec + b_dec - x).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tokens = data(args.tokens, args.d_in)
    trained = args.steps * args.batch
    timings = {}
    for name, run in (
        ("bare_pytorch_topk", bare_loop),
        ("sae_lens_trainer", sae_lens_trainer),
        ("sae_genomics", ours),
    ):
        run(tokens, argparse.Namespace(**{**vars(args), "steps": 5}))  # warm-up (allocations, imports)
        timings[name] = min(run(tokens, args) for _ in range(2))
    per_second = {name: round(trained / seconds) for name, seconds in timings.items()}
    print(
        json.dumps(
            {
                "d_in": args.d_in,
                "d_sae": args.d_in * args.expansion,
                "k": args.k,
                "batch": args.batch,
                "steps": args.steps,
                "device": args.device,
                "tokens_per_s": per_second,
                "ours_vs_sae_lens": round(per_second["sae_genomics"] / per_second["sae_lens_trainer"], 3),
                "ours_vs_bare": round(per_second["sae_genomics"] / per_second["bare_pytorch_topk"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
