"""Quantize / dequantize throughput and quantization error: Modelyard's torch code against
gguf-py's numpy code, on realistic tensor sizes.

    python tests/bench/quant_bench.py [--repeat 3] [--sizes 4096x4096,11008x4096] [--no-gguf-py]

Prints, for each tensor size and each type Modelyard writes, MB/s of float32 input for torch on
the CPU (and CUDA when there is one) and for gguf-py (best of --repeat runs for both, after a
warm-up), with the speed ratio; then dequantize
throughput (MB/s of float32 output) for every type with a torch kernel, K-quants included; then
the RMS quantization error of each type on the real-valued weights of a generated tiny llama
(tests/reference_models.py, quantized by llama.cpp's own quantizer) and on random normal
weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType, quants  # noqa: E402

from app.core.quant import dequantize, quantize  # noqa: E402
from app.core.quant.codec import DEQUANTIZERS, QUANTIZERS  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))


@cache
def reference_folder() -> Path:
    """The generated tiny llama (real-valued F32) and llama.cpp's pure quantizations of it."""
    from reference_models import ReferenceFiles

    return ReferenceFiles(Path(tempfile.mkdtemp(prefix="quant-bench-"))).standard_folder()


MB = 1e6
SLOW = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}  # iterative scale searches; gguf-py cannot


def best_time(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocator, kernels, caches
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def devices() -> list[tuple[str, torch.device, Callable[[], None]]]:
    found: list[tuple[str, torch.device, Callable[[], None]]] = [
        ("torch cpu", torch.device("cpu"), lambda: None)]
    if torch.cuda.is_available():
        found.append((f"torch cuda ({torch.cuda.get_device_name()})", torch.device("cuda"),
                      torch.cuda.synchronize))
    return found


def quantize_throughput(sizes: list[tuple[int, int]], repeat: int, with_gguf_py: bool) -> None:
    types = [t for t in QUANTIZERS if t != "F32"]
    print(f"\n== quantize: MB/s of float32 input (best of {repeat}) ==")
    for rows, cols in sizes:
        data = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.02).astype(np.float32)
        mb = data.nbytes / MB
        print(f"\n{rows}x{cols} float32 ({mb:.0f} MB)")
        header = f"{'type':6} " + " ".join(f"{label:>22}" for label, _, _ in devices())
        print(header + (f" {'gguf-py numpy':>14} {'speed-up':>9}" if with_gguf_py else ""))
        for name in types:
            line, cpu_seconds = f"{name:6} ", 0.0
            for _label, device, sync in devices():
                weights = torch.from_numpy(data).to(device)
                seconds = best_time(lambda w=weights, n=name: quantize(w, n),
                                    1 if name in SLOW else repeat, sync)
                cpu_seconds = cpu_seconds or seconds
                line += f" {mb / seconds:22,.0f}"
            if with_gguf_py and name not in SLOW:
                ggml = GGMLQuantizationType[name]
                numpy_seconds = best_time(lambda g=ggml, d=data: quants.quantize(d, g), repeat,
                                          lambda: None)
                expected = quants.quantize(data, ggml)
                mine = quantize(torch.from_numpy(data), name).numpy()
                assert np.array_equal(mine.reshape(-1), expected.view(np.uint8).reshape(-1)), name
                line += f" {mb / numpy_seconds:14,.0f} {numpy_seconds / cpu_seconds:8.1f}x"
            print(line)


def kquant_bytes(name: str, n_blocks: int) -> np.ndarray:
    """Real blocks of type `name`: the reference file's tensors, repeated to `n_blocks`."""
    reader = gguf.GGUFReader(reference_folder() / f"tiny-llama-pure-{name}.gguf")
    type_size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType[name]][1]
    blocks = np.concatenate([np.asarray(t.data).reshape(-1, type_size)
                             for t in reader.tensors if t.tensor_type.name == name])
    return np.resize(blocks, (n_blocks, type_size))


def dequantize_throughput(repeat: int, with_gguf_py: bool) -> None:
    rows, cols = 4096, 4096
    print(f"\n== dequantize {rows}x{cols}: MB/s of float32 output (best of {repeat}) ==")
    header = f"{'type':6} " + " ".join(f"{label:>22}" for label, _, _ in devices())
    print(header + (f" {'gguf-py numpy':>14} {'speed-up':>9}" if with_gguf_py else ""))
    data = (np.random.default_rng(1).standard_normal((rows, cols)) * 0.02).astype(np.float32)
    mb = data.nbytes / MB
    for name in DEQUANTIZERS:
        ggml = GGMLQuantizationType[name]
        block, type_size = gguf.GGML_QUANT_SIZES[ggml]
        if name in QUANTIZERS and name not in SLOW:
            raw = quantize(torch.from_numpy(data), name).numpy()
        elif (reference_folder() / f"tiny-llama-pure-{name}.gguf").exists():
            raw = kquant_bytes(name, rows * cols // block).reshape(rows, -1)
        else:
            continue  # Q8_K: no file has it, and nothing writes it
        line, cpu_seconds = f"{name:6} ", 0.0
        for _label, device, sync in devices():
            packed = torch.from_numpy(raw).to(device)
            seconds = best_time(lambda p=packed, n=name: dequantize(p, n), repeat, sync)
            cpu_seconds = cpu_seconds or seconds
            line += f" {mb / seconds:22,.0f}"
        if with_gguf_py and name != "F32":
            numpy_seconds = best_time(lambda r=raw, g=ggml: quants.dequantize(r, g), repeat,
                                      lambda: None)
            line += f" {mb / numpy_seconds:14,.0f} {numpy_seconds / cpu_seconds:8.1f}x"
        print(line)


def quantization_error() -> None:
    """RMS error of each type on real weights: the reference F32 llama against what
    llama-quantize --pure wrote, both read back with Modelyard's dequantizers."""
    reader = gguf.GGUFReader(reference_folder() / "tiny-llama-F32.gguf")
    source = {t.name: np.asarray(t.data) for t in reader.tensors if len(t.shape) > 1}
    reference = np.concatenate([v.ravel() for v in source.values()])
    rms = float(np.sqrt(np.mean(reference.astype(np.float64) ** 2)))
    print(f"\n== RMS quantization error on the generated tiny llama's {len(source)} matrices "
          f"({reference.size:,} real weights, RMS {rms:.5f}) ==")
    print(f"{'type':6} {'bits/weight':>11} {'RMS error':>11} {'relative':>9}  written by")
    for name in ["F16", "BF16", "Q8_0", "Q6_K", "Q5_1", "Q5_K", "Q5_0", "Q4_1", "Q4_K", "Q4_0",
                 "Q3_K", "Q2_K"]:
        ggml = GGMLQuantizationType[name]
        block, type_size = gguf.GGML_QUANT_SIZES[ggml]
        path = reference_folder() / f"tiny-llama-pure-{name}.gguf"
        if path.exists():
            # Each tensor in its own type: rows that do not fit K blocks fell back.
            tensors = {t.name: (np.asarray(t.data), t.tensor_type.name)
                       for t in gguf.GGUFReader(path).tensors}
            restored = {n: dequantize(torch.from_numpy(np.array(tensors[n][0])),
                                      tensors[n][1]).numpy() for n in source}
            origin = "llama-quantize (ffn_down fell back)" if block == 256 else "llama-quantize"
        else:
            restored = {n: dequantize(quantize(torch.from_numpy(np.array(v)), name),
                                      name).numpy() for n, v in source.items()}
            origin = "Modelyard"
        diff = np.concatenate([(restored[n] - source[n]).ravel() for n in source])
        error = float(np.sqrt(np.mean(diff.astype(np.float64) ** 2)))
        print(f"{name:6} {type_size * 8 / block:11.3f} {error:11.6f} {error / rms:9.4f}  "
              f"{origin}")


def random_weights_error() -> None:
    """RMS error of each type Modelyard writes on random normal weights (4096x4096, 0.02)."""
    data = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(2)) * 0.02
    rms = float(data.pow(2).mean().sqrt())
    print(f"\n== RMS quantization error on 4096x4096 random normal weights (RMS {rms:.5f}), "
          "written by Modelyard ==")
    print(f"{'type':6} {'bits/weight':>11} {'RMS error':>11} {'relative':>9}")
    for name in QUANTIZERS:
        block, type_size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        error = float((dequantize(quantize(data, name), name) - data).pow(2).mean().sqrt())
        print(f"{name:6} {type_size * 8 / block:11.3f} {error:11.7f} {error / rms:9.5f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="4096x4096,11008x4096")
    parser.add_argument("--no-gguf-py", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy "
          f"{np.__version__}, gguf-py, {os.cpu_count()} CPUs, load average {load:.2f}")
    quantize_throughput(sizes, args.repeat, not args.no_gguf_py)
    dequantize_throughput(args.repeat, not args.no_gguf_py)
    quantization_error()
    random_weights_error()


if __name__ == "__main__":
    main()
