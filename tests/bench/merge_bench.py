"""TIES and DARE-TIES of three generated Llamas (bf16), each merge a whole process: wall time
and peak RSS of `modelyard merge`, and of `mergekit-yaml` on the same YAML when mergekit is
importable (it is not a dependency; e.g. `pip install --target DIR mergekit` and PYTHONPATH=DIR).

    .venv/bin/python tests/bench/merge_bench.py [--size 1b|layers2|small] [--keep DIR]
        [--generate-only]

`--size 1b` is the issue's case: hidden 2048, 16 layers, FFN 5632, vocab 49152 (~0.9 B
parameters, 1.8 GB each); `layers2` has the same tensors but 2 layers (0.6 GB each), so its
peak RSS (set by the largest tensor) compares as the 1 B one does, in an eighth of the time;
`small` (hidden 256, 2 layers, vocab 4096) proves the script works in seconds, its RSS mostly
the interpreter and torch. Models are written tensor by tensor, so generating them needs little
RAM. The issue's targets (time <= mergekit's, peak RSS <= 0.3x) are judged at `1b`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"1b": (2048, 16, 5632, 49152, 32, 4), "layers2": (2048, 2, 5632, 49152, 32, 4),
         "small": (256, 2, 688, 4096, 4, 2)}

# Run a console entry point in a fresh interpreter and report its own peak RSS (VmHWM is per
# process image, so the bench's memory never counts).
WRAPPER = """
import atexit, importlib, sys
def report():
    hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
               if l.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS {hwm}\\n")
atexit.register(report)
module, function = sys.argv[1].split(":")
sys.argv = sys.argv[1:]
code = getattr(importlib.import_module(module), function)()
sys.exit(code if isinstance(code, int) else 0)
"""


def shapes(hidden: int, layers: int, ffn: int, vocab: int, heads: int, kv_heads: int
           ) -> dict[str, tuple[int, ...]]:
    kv = kv_heads * hidden // heads
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        out.update({f"{p}.input_layernorm.weight": (hidden,),
                    f"{p}.self_attn.q_proj.weight": (hidden, hidden),
                    f"{p}.self_attn.k_proj.weight": (kv, hidden),
                    f"{p}.self_attn.v_proj.weight": (kv, hidden),
                    f"{p}.self_attn.o_proj.weight": (hidden, hidden),
                    f"{p}.post_attention_layernorm.weight": (hidden,),
                    f"{p}.mlp.gate_proj.weight": (ffn, hidden),
                    f"{p}.mlp.up_proj.weight": (ffn, hidden),
                    f"{p}.mlp.down_proj.weight": (hidden, ffn)})
    out["model.norm.weight"] = (hidden,)
    out["lm_head.weight"] = (vocab, hidden)
    return out


def make_model(folder: Path, size: str, seed: int) -> Path:
    """A bf16 Llama: the same base weights in every model plus its own small difference, as
    fine-tunes of one base are, written 4 Mi values at a time."""
    import torch

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True)
    hidden, layers, ffn, vocab, heads, kv_heads = SIZES[size]
    table = shapes(hidden, layers, ffn, vocab, heads, kv_heads)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in table.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    base_gen = torch.Generator().manual_seed(0)
    own_gen = torch.Generator().manual_seed(1000 + seed)
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for shape in table.values():
            count = 1
            for dim in shape:
                count *= dim
            done = 0
            while done < count:
                step = min(4 << 20, count - done)
                values = torch.randn(step, generator=base_gen) * 0.02
                values += torch.randn(step, generator=own_gen) * 0.002
                if len(shape) == 1:
                    values += 1
                handle.write(values.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
                done += step
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


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
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", WRAPPER, entry, *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = [int(line.split()[1]) for line in done.stderr.splitlines()
            if line.startswith("PEAK_RSS ")]
    if done.returncode or not peak:
        return f"failed ({done.returncode}): {done.stderr.strip()[-600:]}"
    return seconds, peak[-1], cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--keep", type=Path, help="generate the models here and keep them")
    parser.add_argument("--generate-only", action="store_true",
                        help="write the models and configs, measure nothing")
    parser.add_argument("--method", choices=["ties", "dare_ties"], action="append",
                        help="measure only this method (repeatable; default both)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    start = time.monotonic()
    models = [make_model(work / f"llama-{args.size}-{i}", args.size, i) for i in range(3)]
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
            print(f"{method:<10} {tool:<10} {seconds:7.1f} {peak / 2**20:12.0f} {cpu:7.1f}")
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
