"""Q4_K_M from an F16 GGUF: the whole `modelyard convert` process against llama.cpp's quantizer
(`llama_model_quantize`, what `llama-quantize` runs, 2 threads), side by side.

    python tests/bench/kquant_bench.py [--size 1b|small] [--runs 3] [--keep DIR]

Generates a Llama-shaped F16 GGUF (1b: 16 layers, n_embd 2048, n_ff 8192, vocab 128256, GQA 4,
about 1.2 B parameters, as Llama 3.2 1B; small: a 4-layer 512-wide model for a quick check),
then runs each tool --runs times, each a whole process measured by tests/bench/measure.py, and
prints the median wall time and peak RSS of both, the speed ratio, and whether the
two files hold the same tensors (types and bytes). Then the round-trip error of each type
(relative RMS) on random normal weights and on real-valued ones (per-row scales, outliers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.measure import mib, run_measured  # noqa: E402

SIZES = {
    "1b": dict(n_layers=16, n_embd=2048, n_ff=8192, n_vocab=128256, n_head=32, n_head_kv=8),
    "small": dict(n_layers=4, n_embd=512, n_ff=1536, n_vocab=4096, n_head=8, n_head_kv=2),
}

MODELYARD = (
    "import runpy, sys\n"
    "sys.argv = ['modelyard', 'convert', sys.argv[1], '-o', sys.argv[2], '--type', 'Q4_K_M',\n"
    "            '--overwrite', '--device', 'cpu']\n"
    "try:\n"
    "    runpy.run_module('app', run_name='__main__')\n"
    "except SystemExit as exc:\n"
    "    if exc.code:\n"
    "        raise\n")
LLAMA_CPP = (
    "import ctypes, sys, llama_cpp\n"
    "params = llama_cpp.llama_model_quantize_default_params()\n"
    "params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M\n"
    "params.nthread = 2\n"
    "status = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),\n"
    "                                        ctypes.byref(params))\n"
    "assert status == 0, status\n")


def make_source(path: Path, size: str) -> Path:
    """An F16 GGUF of real-valued weights, written in a child so this process stays small."""
    code = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[3], sys.argv[4]]\n"
            "from factories import make_gguf; from reference_models import real_valued_weights\n"
            "import json\n"
            "make_gguf(Path(sys.argv[1]), f16=True, weight_maker=real_valued_weights,\n"
            "          **json.loads(sys.argv[2]))\n")
    subprocess.run([sys.executable, "-c", code, str(path), json.dumps(SIZES[size]), str(ROOT),
                    str(ROOT / "tests")], check=True)
    return path


def run_once(script: str, source: Path, target: Path) -> tuple[float, int]:
    run = run_measured([sys.executable, "-c", script, str(source), str(target)], cwd=ROOT)
    return run.seconds, run.peak_rss


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(tensors that differ in type or bytes, tensors) between two GGUFs."""
    from reference_models import tensors_of

    ours, theirs = tensors_of(a), tensors_of(b)
    differing = sum(ours.get(name) != value for name, value in theirs.items())
    return differing + len(set(ours) - set(theirs)), len(theirs)


def round_trip_errors() -> None:
    import torch

    from app.core.quant import dequantize, quantize
    from reference_models import real_valued_weights

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tensors = {"random": torch.randn(256, 4096) * 0.02,
               "real-valued": torch.from_numpy(real_valued_weights(rng, (256, 4096)))}
    print(f"\n{'type':<6}" + "".join(f"{name + ' rel. RMS':>22}" for name in tensors))
    for qtype in ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"):
        errors = []
        for weights in tensors.values():
            restored = dequantize(quantize(weights, qtype), qtype)
            errors.append(float((restored - weights).pow(2).mean().sqrt()
                                / weights.pow(2).mean().sqrt()))
        print(f"{qtype:<6}" + "".join(f"{e:22.4f}" for e in errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="1b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="folder for the model and outputs (kept)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kquant-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"llama-{args.size}-F16.gguf"
    if not source.exists():
        make_source(source, args.size)
    print(f"source {source.name}: {source.stat().st_size / 2**20:.0f} MiB; {args.runs} runs each")
    results = {}
    for tool, script in (("modelyard convert", MODELYARD), ("llama_model_quantize", LLAMA_CPP)):
        target = folder / f"{tool.split()[0]}-Q4_K_M.gguf"
        runs = [run_once(script, source, target) for _ in range(args.runs)]
        results[tool] = (statistics.median(s for s, _ in runs),
                         statistics.median(p for _, p in runs), target)
    print(f"{'tool':<22} {'median s':>9} {'median peak MiB':>15}")
    for tool, (seconds, peak, _) in results.items():
        print(f"{tool:<22} {seconds:9.1f} {mib(peak, 15)}")
    ours, theirs = results["modelyard convert"], results["llama_model_quantize"]
    print(f"speed: {theirs[0] / ours[0]:.2f}x llama.cpp's; peak RSS: "
          f"{ours[1] / theirs[1]:.2f}x llama.cpp's")
    differing, total = same_tensors(ours[2], theirs[2])
    print(f"tensors differing in type or bytes: {differing} of {total}")
    round_trip_errors()


if __name__ == "__main__":
    main()
