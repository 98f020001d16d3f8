"""Time every update codec on the FedAvg CNN's parameter set (1,663,370 parameters).

Prints one line per codec::

    codec=<name> encode_ms=<x> decode_ms=<y> bytes=<n> ratio=<fp32/bytes>

``encode_ms`` is :func:`fedsplit.compression.encode_update` over the whole
tensor set, ``decode_ms`` is :func:`fedsplit.compression.decode_update` with the
expected shapes (as the server does), both the median of ``--reps`` runs after a
warm-up run; ``bytes`` is ``len(payload)``; ``ratio`` is the fp32 size
(6,653,480 bytes) over ``bytes``. With ``--train`` it also times one local epoch
of the CNN (SGD, batch 10, 600 random 28x28 images: a FedAvg MNIST client) and
prints ``local_train_ms=<t> worst_codec_share=<fraction>`` where the share is
the slowest codec's encode + decode (+ the error-feedback decode) over that time.

Usage: ``python experiments/bench_codecs.py [--reps 5] [--train] [--codecs topk,qsgd]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fedsplit.cli_types import positive_int
from fedsplit.compression import (
    EncodeContext,
    decode_update,
    dense_nbytes,
    encode_update,
    make_codec,
    specs_of,
)

# FedAvg CNN (McMahan et al., 2017) in PyTorch state_dict order and layout.
CNN_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (32, 1, 5, 5),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 5, 5),
    "conv2.bias": (64,),
    "fc1.weight": (512, 3136),
    "fc1.bias": (512,),
    "fc2.weight": (10, 512),
    "fc2.bias": (10,),
}

# Codec settings of the compression sweep.
BENCH_CODECS: dict[str, dict[str, object]] = {
    "identity": {},
    "fp16": {},
    "int8": {},
    "qsgd": {"levels": 16},
    "topk": {"density": 0.01},
    "randk": {"density": 0.01},
    "sign": {},
    "powersgd": {"rank": 2},
}


def cnn_update(seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic update with the CNN's shapes (Gaussian, std 1e-3)."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in CNN_SHAPES.items()}


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_codec(name: str, params: dict[str, object], update: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    """Median encode/decode times in ms, payload bytes and ratio for one codec."""
    codec = make_codec(name, **params)
    ctx = EncodeContext(rng=np.random.default_rng(1))
    specs = specs_of(update)
    payload = encode_update(update, codec, ctx)
    encode_ms = _median_ms(lambda: encode_update(update, codec, ctx), reps)
    decode_ms = _median_ms(lambda: decode_update(payload, expected=specs), reps)
    return {
        "encode_ms": encode_ms,
        "decode_ms": decode_ms,
        "bytes": len(payload),
        "ratio": dense_nbytes(update) / len(payload),
    }


def local_train_ms(samples: int = 600, batch: int = 10) -> float:
    """Wall time of one local epoch of the FedAvg CNN on random data, in ms."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10),
    )
    assert sum(p.numel() for p in model.parameters()) == sum(int(np.prod(s)) for s in CNN_SHAPES.values())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(samples, 1, 28, 28)
    y = torch.randint(0, 10, (samples,))
    t0 = time.perf_counter()
    for i in range(0, samples, batch):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per measurement")
    parser.add_argument("--codecs", default=",".join(BENCH_CODECS), help="comma-separated codec names")
    parser.add_argument("--train", action="store_true", help="also time one local epoch of the CNN")
    args = parser.parse_args(argv)

    update = cnn_update()
    assert sum(a.size for a in update.values()) == 1_663_370
    worst = 0.0
    for name in args.codecs.split(","):
        r = bench_codec(name, BENCH_CODECS.get(name, {}), update, args.reps)
        # client side with error feedback = encode + one decode; server side = one decode
        worst = max(worst, r["encode_ms"] + 2 * r["decode_ms"])
        print(
            f"codec={name} encode_ms={r['encode_ms']:.2f} decode_ms={r['decode_ms']:.2f} "
            f"bytes={r['bytes']} ratio={r['ratio']:.1f}",
            flush=True,
        )
    if args.train:
        train = local_train_ms()
        print(f"local_train_ms={train:.0f} worst_codec_share={worst / train:.4f}")


if __name__ == "__main__":
    main()
