"""Convert a generated ~1B-parameter Llama (bf16, two shards) to F16 and Q8_0; print wall time,
MB/s and peak RSS of each conversion, and gguf-py's numpy quantizer speed beside Modelyard's.

    .venv/bin/python tests/bench/convert_bench.py [--keep DIR] [--types F16 Q8_0]

The model (hidden 2048, 16 layers, FFN 5632, vocab 49152, 32 heads / 4 KV heads, untied
embeddings; ~0.9 B parameters, 1.8 GB) is written tensor by tensor in row chunks, so generating
it needs little RAM. For scale: llama.cpp's convert_hf_to_gguf.py took 16.4 s and 1,012 MB peak
RSS for this model to Q8_0 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HIDDEN, LAYERS, FFN, VOCAB, HEADS, KV_HEADS = 2048, 16, 5632, 49152, 32, 4
HEAD_DIM = HIDDEN // HEADS

CHILD = """
import json, sys, time
from pathlib import Path
from app.core.convert import ConvertRequest
from app.core.jobs import NullReporter
source, target, out_type = sys.argv[1:4]
request = ConvertRequest(Path(source), Path(target), out_type, device="cpu", overwrite=True)
start = time.monotonic()
plan = request.plan()
result = request.run(NullReporter())
seconds = time.monotonic() - start
# VmHWM, not getrusage: ru_maxrss survives exec, so a child would report its parent's peak.
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak": hwm, "estimate": plan.estimated_peak_bytes,
                  "naive": plan.naive_peak_bytes, "input": plan.input_bytes,
                  "output": result.bytes_written}))
"""


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        shapes.update({
            f"{p}.input_layernorm.weight": (HIDDEN,),
            f"{p}.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.post_attention_layernorm.weight": (HIDDEN,),
            f"{p}.mlp.gate_proj.weight": (FFN, HIDDEN),
            f"{p}.mlp.up_proj.weight": (FFN, HIDDEN),
            f"{p}.mlp.down_proj.weight": (HIDDEN, FFN),
        })
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
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
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
              "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def quantizer_speeds(folder: Path, types: list[str]) -> None:
    """gguf-py's numpy quantizer and Modelyard's (app.core.quant) on the same tensors."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from app.core.quant import can_quantize, quantize

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="generate the model here and keep it")
    parser.add_argument("--types", nargs="+", default=["F16", "Q8_0"])
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="convert-bench-"))
    start = time.monotonic()
    model = make_model(work / "llama-1b-bf16")
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"model: {model} ({size / 1e9:.2f} GB bf16, generated in "
          f"{time.monotonic() - start:.0f} s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'type':<6} {'wall s':>7} {'MB/s in':>8} {'peak RSS MB':>12} {'estimate MB':>12} "
          f"{'naive MB':>9} {'output MB':>10}")
    for out_type in args.types:
        target = work / f"llama-1b-{out_type}.gguf"
        out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(target), out_type],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(f"{out_type}: failed\n{out.stderr[-2000:]}")
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{out_type:<6} {m['seconds']:7.1f} {m['input'] / m['seconds'] / 1e6:8.0f} "
              f"{m['peak'] / 2**20:12.0f} {m['estimate'] / 2**20:12.0f} "
              f"{m['naive'] / 2**20:9.0f} {m['output'] / 2**20:10.0f}")
        target.unlink(missing_ok=True)
    quantizer_speeds(model, args.types)


if __name__ == "__main__":
    main()
