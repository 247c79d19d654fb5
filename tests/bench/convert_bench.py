"""Whole `modelyard convert` processes, as a user runs them, side by side with llama.cpp's
convert_hf_to_gguf.py on the same generated Llama (bf16, two shards): median wall time of
several runs, MB/s of input, peak RSS; plus `modelyard --help` and planning times, and gguf-py's
numpy quantizer speed beside Modelyard's.

    .venv/bin/python tests/bench/convert_bench.py [--size 1b|small] [--runs 3]
        [--types F16 Q8_0] [--llama-cpp DIR] [--keep DIR]

DIR (or MODELYARD_LLAMA_CPP_SOURCE) is a llama.cpp source tree holding convert_hf_to_gguf.py,
e.g. llama-cpp-python's sdist under vendor/llama.cpp; without one, llama.cpp's column is
skipped. `1b` is hidden 2048, 16 layers, FFN 5632, vocab 49152, 32 heads / 4 KV heads, untied
embeddings (~0.9 B parameters, 1.8 GB); `small` proves the script in seconds. The model is
written tensor by tensor in row chunks, so generating it needs little RAM. Its tokenizer is a
SentencePiece tokenizer.model (llama.cpp's converter reads it without transformers) with the
tokenizer.json transformers derives from it, declared generic as Llama 3 checkpoints declare
theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    ffn: int
    vocab: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES = {"1b": Dims(2048, 16, 5632, 49152, 32, 4), "small": Dims(512, 2, 1024, 4096, 8, 2)}
DIMS = SIZES["1b"]

# Runs a command as __main__ in this process and reports its peak RSS on exit: VmHWM, not
# getrusage, because ru_maxrss survives exec and a child would report the benchmark's peak.
PEAK_WRAPPER = """
import atexit, runpy, sys
def report():
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nBENCH_PEAK_RSS {hwm}\\n")
atexit.register(report)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:  # a script: its folder first on the path, as `python script.py` has it
    sys.path.insert(0, target.rsplit("/", 1)[0])
    runpy.run_path(target, run_name="__main__")
"""

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


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    d = DIMS
    hidden, kv_width = d.hidden, d.kv_heads * d.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (d.vocab, hidden)}
    for layer in range(d.layers):
        p = f"model.layers.{layer}"
        shapes.update({
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.self_attn.q_proj.weight": (hidden, hidden),
            f"{p}.self_attn.k_proj.weight": (kv_width, hidden),
            f"{p}.self_attn.v_proj.weight": (kv_width, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, hidden),
            f"{p}.post_attention_layernorm.weight": (hidden,),
            f"{p}.mlp.gate_proj.weight": (d.ffn, hidden),
            f"{p}.mlp.up_proj.weight": (d.ffn, hidden),
            f"{p}.mlp.down_proj.weight": (hidden, d.ffn),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (d.vocab, hidden)
    return shapes


def write_shard(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bf16 safetensors file written tensor by tensor, 4 Mi values at a time."""
    import torch

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = 1
        for dim in shape:
            n *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(0)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            n = 1
            for dim in shape:
                n *= dim
            if len(shape) == 1:
                handle.write(torch.ones(n, dtype=torch.bfloat16).view(torch.uint8).numpy())
                continue
            done = 0
            while done < n:
                step = min(4 << 20, n - done)
                values = torch.randn(step, generator=generator) * 0.02
                handle.write(values.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
                done += step


def make_model(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes()
    names = list(shapes)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for shard, members in shards.items():
        write_shard(folder / shard, {n: shapes[n] for n in members})
    index = {"metadata": {}, "weight_map": {n: s for s, ms in shards.items() for n in ms}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    d = DIMS
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": d.hidden, "intermediate_size": d.ffn, "num_hidden_layers": d.layers,
              "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
              "vocab_size": d.vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(folder)
    return folder


def save_tokenizer(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from transformers import LlamaTokenizer

    import factories

    factories.save_spm_tokenizer(folder)
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model")).save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))


def quantizer_speeds(folder: Path, types: list[str]) -> None:
    """gguf-py's numpy quantizer and Modelyard's (app.core.quant) on the same tensors."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from app.core.convert.allocator import keep_freed_buffers
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{done.stderr[-2000:]}")
    peak = next((int(line.split()[1]) for line in done.stderr.splitlines()
                 if line.startswith("BENCH_PEAK_RSS ")), None)
    if peak is None:  # never print a peak that was not measured
        raise RuntimeError(f"{' '.join(command[:6])} ... reported no peak RSS")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, peak, cpu


def converter_commands(model: Path, target: Path, out_type: str,
                       llama_cpp: Path | None) -> dict[str, list[str]]:
    wrap = [sys.executable, "-c", PEAK_WRAPPER]
    commands = {"modelyard": wrap + ["module", "app", "convert", str(model), "-o", str(target),
                                     "--type", out_type, "--device", "cpu", "--overwrite"]}
    if llama_cpp is not None:
        commands["llama.cpp"] = wrap + ["path", str(llama_cpp / "convert_hf_to_gguf.py"),
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
    global DIMS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="generate the model here and keep it")
    parser.add_argument("--types", nargs="+", default=["F16", "Q8_0"])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--runs", type=int, default=3, help="runs per converter and type")
    parser.add_argument("--llama-cpp", type=Path,
                        default=os.environ.get("MODELYARD_LLAMA_CPP_SOURCE") or None,
                        help="llama.cpp source tree with convert_hf_to_gguf.py")
    args = parser.parse_args()
    DIMS = SIZES[args.size]
    llama_cpp = args.llama_cpp
    if llama_cpp is not None and not (llama_cpp / "convert_hf_to_gguf.py").is_file():
        print(f"no convert_hf_to_gguf.py in {llama_cpp}: llama.cpp's converter skipped")
        llama_cpp = None
    work = args.keep or Path(tempfile.mkdtemp(prefix="convert-bench-"))
    start = time.monotonic()
    model = make_model(work / f"llama-{args.size}-bf16")
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
                  f"{peak / 2**20:13.0f} {cpu:6.1f}")
        if len(medians) == 2:
            print(f"{out_type:<6} llama.cpp / modelyard: "
                  f"{medians['llama.cpp'] / medians['modelyard']:.2f}x wall, "
                  f"{cpus['llama.cpp'] / cpus['modelyard']:.2f}x CPU")
    quantizer_speeds(model, args.types)


if __name__ == "__main__":
    main()
