"""`modelyard --self-test`: prove an installed (or bundled) Modelyard works end to end on a tiny
model: scan it, convert it to a GGUF, run the K-quant searches, generate a few tokens. Exit 0
when every step passes.

The generation runs the converted GGUF in llama.cpp, the runtime a user's tests use; only where
llama-cpp-python is not installed does it run the HF folder in transformers. The step's line
names the runtime either way. It runs in a job process, as the window's generations do.

The tiny model is the one bundled under resources/selftest/ (the build writes it there with
`python -m app.self_test --write-model DIR`); without it, one is written to a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from app.core.generate.backends.llama_cpp import llama_cpp_available
from app.resource_files import resource_path

BUNDLED = ("selftest", "tiny-llama")
TOKENIZER_TEXT = ("The capital of France is Paris. A model that fits is a model that runs. "
                  "Quantized weights are smaller; the errors of two quantizations stack.")


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random two-layer Llama (hidden 64, vocab 320) with a byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([TOKENIZER_TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    return folder


def _step(out: TextIO, name: str, action: Callable[[], str]) -> bool:
    started = time.monotonic()
    try:
        detail = action()
    except Exception as exc:  # the self-test reports every failure, whatever it is
        out.write(f"self-test: {name} FAILED: {type(exc).__name__}: {exc}\n")
        return False
    out.write(f"self-test: {name} ok ({detail}, {time.monotonic() - started:.1f} s)\n")
    return True


def run_self_test(out: TextIO = sys.stdout) -> int:
    from app.core.convert import ConvertRequest
    from app.core.formats.scan import ScanRequest
    from app.core.generate.request import GenerateRequest
    from app.core.jobs import RecordingReporter
    from app.core.jobs_process import run_in_child

    with tempfile.TemporaryDirectory(prefix="modelyard-self-test-") as tmp:
        work = Path(tmp)
        bundled = resource_path(*BUNDLED)
        model = bundled if (bundled / "config.json").is_file() else work / "tiny-llama"

        def prepare() -> str:
            if model == bundled:
                return f"bundled model {model}"
            write_tiny_model(model)
            return "no bundled model: wrote one"

        def scan() -> str:
            found = ScanRequest((model.parent,)).run(RecordingReporter())
            names = [m.name for m in found.models if m.path == model]
            if not names:
                raise RuntimeError(f"the scan of {model.parent} did not find {model.name}")
            return f"found {names[0]}"

        gguf = work / "tiny-llama-Q8_0.gguf"

        def convert() -> str:
            result = ConvertRequest(model, gguf, "Q8_0", device="cpu").run(RecordingReporter())
            return f"{result.tensors_written} tensors to {gguf.name}"

        def kquants() -> str:
            # The tiny model's rows are too short for K-quants (256 values a block), so the
            # compiled searches they run on the CPU are checked on a tensor of their own: a
            # bundle that cannot load or compile them fails here, not in a user's conversion.
            import torch

            from app.core.quant import dequantize, quantize

            weights = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
            errors = []
            # One type per compiled kernel: Q3_K's search, Q4_K's (and the requantization),
            # Q6_K's. Relative RMS errors of these weights: Q3_K 0.150, Q4_K 0.072, Q6_K 0.018.
            limits = {"Q3_K": 0.16, "Q4_K": 0.08, "Q6_K": 0.02}
            for qtype, limit in limits.items():
                back = dequantize(quantize(weights, qtype), qtype, weights.shape)
                error = float((back - weights).pow(2).mean().sqrt() / weights.pow(2).mean().sqrt())
                if not error < limit:
                    raise RuntimeError(f"{qtype} round trip error {error:.4f} is too large")
                errors.append(f"{qtype} {error:.3f}")
            return "relative RMS error " + ", ".join(errors)

        def generate() -> str:
            if llama_cpp_available():
                source, backend, why = gguf, "llama.cpp", ""
            else:
                source, backend, why = model, "transformers", ", llama-cpp-python not installed"
            # In a job process, as the window runs it: a bundle's way of starting one is checked.
            outcome = run_in_child(GenerateRequest(source, "Hello", max_tokens=4,
                                                   backend=backend, use_gpu=False),
                                   RecordingReporter())
            if outcome.status != "done":
                raise RuntimeError(f"the job process {outcome.status}: {outcome.error}")
            result = outcome.value
            if result.n_generated <= 0:
                raise RuntimeError(f"{result.backend} generated no token from {source.name}")
            return (f"{result.n_generated} tokens with {result.backend} from {source.name} in a "
                    f"job process{why}")

        steps = (("model", prepare), ("scan", scan), ("convert", convert),
                 ("K-quants", kquants), ("generate", generate))
        passed = all(_step(out, name, action) for name, action in steps)
    out.write("self-test: passed\n" if passed else "self-test: failed\n")
    return 0 if passed else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write-model"] and len(argv) == 2:
        write_tiny_model(Path(argv[1]))
        return 0
    return run_self_test()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
