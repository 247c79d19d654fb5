"""Whole `modelyard convert` processes, as a user runs them, side by side with llama.cpp's
convert_hf_to_gguf.py on the same generated Llama (bf16, two shards): median wall time of
several runs, MB/s of input, peak RSS; plus `modelyard --help` and planning times, and gguf-py's
numpy quantizer speed beside Modelyard's.

    .venv/bin/python tests/bench/convert_bench.py [--size 1b|small] [--runs 3]
        [--types F16 Q8_0] [--llama-cpp DIR] [--keep DIR]

DIR (or MODELYARD_LLAMA_CPP_SOURCE) is a llama.cpp source tree holding convert_hf_to_gguf.py,
e.g. llama-cpp-python's sdist under vendor/llama.cpp; without one, llama.cpp's column is
skipped. `1b` is hidden 2048, 16 layers, FFN 5632, vocab 49152, 32 heads / 4 KV heads, untied
embeddings (~0.9 B parameters, 1.8 GB); `small` proves the script in seconds. The model, with
a SentencePiece tokenizer llama.cpp's converter reads without transformers, comes from
tests/bench/llama_safetensors.py; each process is measured by tests/bench/measure.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.llama_safetensors import write_llama  # noqa: E402
from bench.measure import mib, run_measured  # noqa: E402

SIZES = ("1b", "small")


PLAN_CHILD = """
import json, sys, time
from pathlib import Path
from app.core.convert import plan_conversion
start = time.perf_counter()
plan = plan_conversion(Path(sys.argv[1]), Path(sys.argv[2]), out_type=sys.argv[3],
                       device="cpu", overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - start, "input": plan.input_bytes,
                  "estimate": plan.estimated_peak_bytes,
                  "transformers": "transformers" in sys.modules}))
"""


def quantizer_speeds(folder: Path, types: list[str]) -> None:
    """gguf-py's numpy quantizer and Modelyard's (app.core.quant) on the same tensors."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from app.core.heap import keep_freed_buffers
    from app.core.quant import can_quantize, quantize

    keep_freed_buffers()  # as the convert job runs its chunks
    names = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
    with safe_open(folder / "model-00001-of-00002.safetensors", "pt") as handle:
        tensors = [handle.get_tensor(n).float() for n in names]
    elements = sum(t.numel() for t in tensors)
    # One torch thread, as each of the job's chunk workers runs (see execute.py).
    torch.set_num_threads(1)
    print(f"\nquantizers on {elements / 1e6:.1f} M values (layer 0 gate_proj + q_proj), "
          "MB/s of bf16 input, one thread each:")
    # Both in the job's chunks of 512 rows (1 Mi values), so temporaries stay in cache alike.
    chunks = [c for t in tensors for c in t.split(512)]
    for out_type in types:
        qtype = gguf.GGMLQuantizationType[out_type]
        start = time.perf_counter()
        for chunk in chunks:
            gguf.quants.quantize(chunk.numpy().astype(np.float32), qtype)
        numpy_s = time.perf_counter() - start
        ours = "n/a"
        if can_quantize(out_type):
            start = time.perf_counter()
            for chunk in chunks:
                quantize(chunk, out_type)
            ours = f"{2 * elements / (time.perf_counter() - start) / 1e6:8.0f}"
        print(f"  {out_type:<5} gguf-py numpy {2 * elements / numpy_s / 1e6:8.0f}   "
              f"Modelyard torch {ours}")


def timed(command: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS and CPU seconds (user + system, all threads) of one whole
    process. On a shared machine the CPU seconds are the steadier figure."""
    run = run_measured(command, cwd=ROOT)
    return run.seconds, run.peak_rss, run.cpu_seconds


def converter_commands(model: Path, target: Path, out_type: str,
                       llama_cpp: Path | None) -> dict[str, list[str]]:
    commands = {"modelyard": [sys.executable, "-m", "app", "convert", str(model), "-o",
                              str(target), "--type", out_type, "--device", "cpu", "--overwrite"]}
    if llama_cpp is not None:
        commands["llama.cpp"] = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"),
                                 str(model), "--outfile", str(target), "--outtype",
                                 out_type.lower()]
    return commands


def median_of(command: list[str], runs: int, target: Path) -> tuple[float, float, int, float]:
    """(median wall s, fastest wall s, median peak RSS, median CPU s) over `runs` runs."""
    results = []
    for _ in range(runs):
        results.append(timed(command))
        target.unlink(missing_ok=True)
    seconds = [r[0] for r in results]
    return (statistics.median(seconds), min(seconds), int(statistics.median(r[1] for r in results)),
            statistics.median(r[2] for r in results))


def startup_times(model: Path, work: Path, runs: int) -> None:
    helps = [timed([sys.executable, "-m", "app", "--help"])[0] for _ in range(runs)]
    plans = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PLAN_CHILD, str(model),
                              str(work / "plan.gguf"), "Q8_0"],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        plans.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"modelyard --help: median {statistics.median(helps):.2f} s (whole process); "
          f"planning Q8_0: median {statistics.median(p['seconds'] for p in plans):.2f} s "
          f"(transformers loaded: {plans[-1]['transformers']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="generate the model here and keep it")
    parser.add_argument("--types", nargs="+", default=["F16", "Q8_0"])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--runs", type=int, default=3, help="runs per converter and type")
    parser.add_argument("--llama-cpp", type=Path,
                        default=os.environ.get("MODELYARD_LLAMA_CPP_SOURCE") or None,
                        help="llama.cpp source tree with convert_hf_to_gguf.py")
    args = parser.parse_args()
    llama_cpp = args.llama_cpp
    if llama_cpp is not None and not (llama_cpp / "convert_hf_to_gguf.py").is_file():
        print(f"no convert_hf_to_gguf.py in {llama_cpp}: llama.cpp's converter skipped")
        llama_cpp = None
    work = args.keep or Path(tempfile.mkdtemp(prefix="convert-bench-"))
    start = time.monotonic()
    model = write_llama(work / f"llama-{args.size}-bf16", args.size, shards=2,
                        tokenizer=True)
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"model: {model} ({size / 1e9:.2f} GB bf16, generated in "
          f"{time.monotonic() - start:.0f} s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.runs} run(s) each, warm page cache")
    startup_times(model, work, args.runs)
    print(f"{'type':<6} {'converter':<10} {'median s':>9} {'best s':>7} {'MB/s in':>8} "
          f"{'peak RSS MiB':>13} {'CPU s':>6}")
    for out_type in args.types:
        target = work / f"llama-{args.size}-{out_type}.gguf"
        medians: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for name, command in converter_commands(model, target, out_type, llama_cpp).items():
            timed(command)  # warms the page cache and the imports
            target.unlink(missing_ok=True)
            median, best, peak, cpu = median_of(command, args.runs, target)
            medians[name] = median
            cpus[name] = cpu
            print(f"{out_type:<6} {name:<10} {median:9.1f} {best:7.1f} {size / median / 1e6:8.0f} "
                  f"{mib(peak, 13)} {cpu:6.1f}")
        if len(medians) == 2:
            print(f"{out_type:<6} llama.cpp / modelyard: "
                  f"{medians['llama.cpp'] / medians['modelyard']:.2f}x wall, "
                  f"{cpus['llama.cpp'] / cpus['modelyard']:.2f}x CPU")
    quantizer_speeds(model, args.types)


if __name__ == "__main__":
    main()
