"""TIES and DARE-TIES of three generated Llamas (bf16), each merge a whole process: wall time
and peak RSS of `modelyard merge`, and of `mergekit-yaml` on the same YAML when mergekit is
importable (it is not a dependency; e.g. `pip install --target DIR mergekit` and PYTHONPATH=DIR).

    .venv/bin/python tests/bench/merge_bench.py [--size 1b|layers2|small] [--keep DIR]
        [--generate-only]

`--size 1b` is the issue's case: hidden 2048, 16 layers, FFN 5632, vocab 49152 (~0.9 B
parameters, 1.8 GB each); `layers2` has the same tensors but 2 layers (0.6 GB each), so its
peak RSS (set by the largest tensor) compares as the 1 B one does, in an eighth of the time;
`small` (hidden 512, 2 layers, vocab 4096) proves the script works in seconds, its RSS mostly
the interpreter and torch. The models come from tests/bench/llama_safetensors.py (written
tensor by tensor, so generating them needs little RAM). The issue's targets (time <= mergekit's,
peak RSS <= 0.3x) are judged at `1b`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from bench.llama_safetensors import write_llama  # noqa: E402
from bench.measure import ProcessFailed, mib, run_measured  # noqa: E402

SIZES = ("1b", "layers2", "small")

# Runs a console entry point (module:function) in a fresh interpreter.
ENTRY = """
import importlib, sys
module, function = sys.argv[1].split(":")
sys.argv = sys.argv[1:]
code = getattr(importlib.import_module(module), function)()
sys.exit(code if isinstance(code, int) else 0)
"""


def yaml_text(method: str, models: list[Path]) -> str:
    base, *others = models
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:", f"  - model: {base}"]
    for model in others:
        lines += [f"  - model: {model}", "    parameters:", "      weight: 0.5",
                  "      density: 0.5"]
    lines += ["dtype: bfloat16"]
    return "\n".join(lines) + "\n"


def measure(entry: str, args: list[str], env: dict[str, str]
            ) -> tuple[float, int, float] | str:
    """(wall seconds, peak RSS bytes, CPU seconds) of one run; CPU time is what to compare on
    a machine others are using."""
    try:
        run = run_measured([sys.executable, "-c", ENTRY, entry, *args], cwd=ROOT, env=env)
    except ProcessFailed as failure:
        return f"failed ({failure.returncode}): {failure.stderr.strip()[-600:]}"
    return run.seconds, run.peak_rss, run.cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--keep", type=Path, help="generate the models here and keep them")
    parser.add_argument("--generate-only", action="store_true",
                        help="write the models and configs, measure nothing")
    parser.add_argument("--method", choices=["ties", "dare_ties"], action="append",
                        help="measure only this method (repeatable; default both)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    start = time.monotonic()
    # Three fine-tunes of one base, as the models a merge combines are.
    models = [write_llama(work / f"llama-{args.size}-{i}", args.size, fine_tune=i)
              for i in range(3)]
    size = sum((m / "model.safetensors").stat().st_size for m in models)
    print(f"models: 3 × {size / 3e9:.2f} GB bf16 in {work} (generated in "
          f"{time.monotonic() - start:.0f} s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        import mergekit  # noqa: F401

        tools = ["modelyard", "mergekit"]
    except ImportError:
        tools = ["modelyard"]
        print("mergekit is not importable: measuring Modelyard only")
    configs = {}
    for method in args.method or ["ties", "dare_ties"]:
        configs[method] = work / f"{method}.yaml"
        configs[method].write_text(yaml_text(method, models))
    if args.generate_only:
        print(f"configs: {', '.join(str(c) for c in configs.values())}")
        return
    print(f"{'method':<10} {'tool':<10} {'wall s':>7} {'peak RSS MiB':>12} {'CPU s':>7}")
    for method, config in configs.items():
        measured: dict[str, tuple[float, int, float]] = {}
        for tool in tools:
            out = work / f"{method}-{tool}"
            if tool == "modelyard":
                result = measure("app.cli:main", ["merge", str(config), "-o", str(out),
                                                  "--device", "cpu", "--overwrite"], env)
            else:
                result = measure("mergekit.scripts.run_yaml:main",
                                 [str(config), str(out), "--no-copy-tokenizer"], env)
            if isinstance(result, str):
                print(f"{method:<10} {tool:<10} {result}")
                continue
            seconds, peak, cpu = result
            measured[tool] = result
            print(f"{method:<10} {tool:<10} {seconds:7.1f} {mib(peak, 12)} {cpu:7.1f}")
        if len(measured) == 2:
            (ours, our_peak, our_cpu), (theirs, their_peak, their_cpu) = \
                measured["modelyard"], measured["mergekit"]
            # The targets: no slower than mergekit, at most 0.3x its peak RSS.
            verdict = "met" if ours <= theirs and our_peak <= 0.3 * their_peak else "NOT met"
            print(f"{method:<10} {'ratio':<10} {ours / theirs:7.2f} {our_peak / their_peak:12.2f}"
                  f" {our_cpu / their_cpu:7.2f}"
                  + (f"  (targets: time <= 1.00, RSS <= 0.30: {verdict})"
                     if args.size == "1b" else ""))


if __name__ == "__main__":
    main()
