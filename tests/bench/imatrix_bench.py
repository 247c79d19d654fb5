"""Weighted quantizers: speed of each type beside ggml's own (the C that llama-quantize runs,
through llama-cpp-python's library), and the importance-weighted error with and without the
matrix on the real reference rows and on random rows with heavy-tailed column importance.

    .venv/bin/python tests/bench/imatrix_bench.py [--rows 256] [--cols 4096] [--threads 1]

Speeds are single-threaded on both sides unless --threads says otherwise; timings on a busy
machine are only indicative.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ggml_reference import ggml_quantize  # noqa: E402

from app.core.quant import dequantize, quantize  # noqa: E402
from app.core.quant.imatrix_file import read_imatrix  # noqa: E402
from app.core.quant.weighted import WEIGHTED_QUANTIZERS  # noqa: E402

DATA = ROOT / "tests" / "data" / "imatrix"


def weighted_error(x: torch.Tensor, raw: torch.Tensor, type_name: str,
                   weights: torch.Tensor) -> float:
    diff = x - dequantize(raw, type_name, x.shape)
    return float((diff * diff * weights).sum() / (x * x * weights).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    importance = rng.lognormal(0, 2, args.cols).astype(np.float32)
    x, w = torch.from_numpy(rows), torch.from_numpy(importance)
    matrix = read_imatrix(DATA / "imatrix.gguf")
    real = {t.name: np.array(t.data).reshape(-1, int(t.shape[0]))
            for t in gguf.GGUFReader(DATA / "tiny-llama-2l-rows32-F32.gguf").tensors
            if t.name in matrix.entries}
    print(f"{'type':6} {'ours M/s':>9} {'ggml M/s':>9} {'same':>5}   weighted error "
          "(random: plain → with matrix; real rows: plain → with matrix)")
    for type_name in sorted(WEIGHTED_QUANTIZERS):
        start = time.perf_counter()
        ours = quantize(x, type_name, importance=w)
        ours_speed = x.numel() / (time.perf_counter() - start) / 1e6
        start = time.perf_counter()
        theirs = ggml_quantize(rows, type_name, importance)
        ggml_speed = x.numel() / (time.perf_counter() - start) / 1e6
        same = np.array_equal(ours.numpy(), theirs)
        plain = ggml_quantize(rows, type_name, None)
        random_errors = (weighted_error(x, torch.from_numpy(plain), type_name, w),
                         weighted_error(x, ours, type_name, w))
        real_plain = real_weighted = 0.0
        for name, values in real.items():
            weights = torch.from_numpy(matrix.weights(name)[0])
            tensor = torch.from_numpy(values.copy())
            real_plain += weighted_error(
                tensor, torch.from_numpy(ggml_quantize(values, type_name, None)), type_name,
                weights)
            real_weighted += weighted_error(
                tensor, quantize(tensor, type_name, importance=weights), type_name, weights)
        print(f"{type_name:6} {ours_speed:9.2f} {ggml_speed:9.2f} {str(same):>5}   "
              f"{random_errors[0]:.3e} → {random_errors[1]:.3e};   "
              f"{real_plain / len(real):.3e} → {real_weighted / len(real):.3e}")


if __name__ == "__main__":
    main()
