"""Generated Llama checkpoints (bf16 safetensors, config.json, optionally a tokenizer) for the
benchmarks, by size name. Written tensor by tensor, 4 Mi values at a time, so a 1 B model
needs little RAM to generate.

`1b` is hidden 2048, 16 layers, FFN 5632, vocab 49152, 32 heads / 4 KV heads, untied embeddings
(~0.9 B parameters, 1.8 GB); `layers2` has the same tensors but 2 layers (0.6 GB), so a peak
set by the largest tensor compares as the 1 B one does; `small` (hidden 512, 2 layers, vocab
4096) proves a script in seconds.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TESTS = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LlamaDims:
    hidden: int
    layers: int
    ffn: int
    vocab: int
    heads: int
    kv_heads: int


LLAMA_SIZES = {"1b": LlamaDims(2048, 16, 5632, 49152, 32, 4),
               "layers2": LlamaDims(2048, 2, 5632, 49152, 32, 4),
               "small": LlamaDims(512, 2, 1024, 4096, 8, 2)}


def llama_shapes(d: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama checkpoint, in file order."""
    hidden, kv_width = d.hidden, d.kv_heads * d.hidden // d.heads
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


def write_llama(folder: Path, size: str, *, shards: int = 1, fine_tune: int | None = None,
                tokenizer: bool = False) -> Path:
    """The Llama of size `size` in `folder`, written unless its config.json (written last) is
    already there. Weights are normal with std 0.02 from one fixed seed (norms around 1), so
    every model of a size shares them; `fine_tune` adds the model's own difference (std
    0.002, seeded by that number), as fine-tunes of one base differ. `shards` > 1 splits the
    tensors into that many files with an index. `tokenizer` adds a SentencePiece
    tokenizer.model (llama.cpp's converter reads it without transformers) and the
    tokenizer.json transformers derives from it, declared generic as Llama 3 checkpoints
    declare theirs."""
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dims = LLAMA_SIZES[size]
    shapes = llama_shapes(dims)
    names = list(shapes)
    per_shard = math.ceil(len(names) / shards)
    files = (["model.safetensors"] if shards == 1 else
             [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)])
    members = {file: names[i * per_shard:(i + 1) * per_shard] for i, file in enumerate(files)}
    base = _generator(0)
    own = None if fine_tune is None else _generator(1000 + fine_tune)
    for file, tensor_names in members.items():
        _write_shard(folder / file, {n: shapes[n] for n in tensor_names}, base, own)
    if shards > 1:
        index = {"metadata": {}, "weight_map": {n: f for f, ns in members.items() for n in ns}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if tokenizer:
        _save_tokenizer(folder)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": dims.hidden, "intermediate_size": dims.ffn,
              "num_hidden_layers": dims.layers, "num_attention_heads": dims.heads,
              "num_key_value_heads": dims.kv_heads, "vocab_size": dims.vocab,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
              "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _generator(seed: int) -> torch.Generator:
    import torch  # only when a model is made: a bench that finds its model starts faster

    return torch.Generator().manual_seed(seed)


def _write_shard(path: Path, shapes: dict[str, tuple[int, ...]], base: torch.Generator,
                 own: torch.Generator | None) -> None:
    import torch

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        count = math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            count, done = math.prod(shape), 0
            while done < count:
                step = min(4 << 20, count - done)
                values = torch.randn(step, generator=base) * 0.02
                if own is not None:
                    values += torch.randn(step, generator=own) * 0.002
                if len(shape) == 1:
                    values += 1
                handle.write(values.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
                done += step


def _save_tokenizer(folder: Path) -> None:
    sys.path.insert(0, str(TESTS))
    from transformers import LlamaTokenizer

    import factories

    factories.save_spm_tokenizer(folder)
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model")).save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))
