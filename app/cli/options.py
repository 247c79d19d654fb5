"""How the command line words a job's option: as the flag that sets it."""

from __future__ import annotations

from app.core.errors import OptionFact

FLAGS = {"backend": "--backend", "device": "--device", "keep_type": "--keep-type",
         "text_file": "--text", "out_type": "--type", "to": "--to",
         "gpu_layers": "--gpu-layers", "context": "--ctx", "vram": "--vram", "ram": "--ram",
         "overwrite": "--overwrite", "n_gpu_layers": "--n-gpu-layers",
         "trust_remote_code": "--trust-remote-code", "require_tokenizer": "--require-tokenizer",
         "split_max_size": "--split-max-size", "experts": "--experts",
         "chunk_size": "--chunk-size", "max_chunks": "--chunks",
         "tensor_types": "--tensor-type", "output_tensor_type": "--output-tensor-type",
         "token_embedding_type": "--token-embedding-type", "target_size": "--target-size"}


def cli_words(option: OptionFact) -> str | None:
    if option.name == "use_chat_template":
        return "--raw" if option.value is False else "leave out --raw"
    flag = FLAGS.get(option.name)
    if flag is None:
        return None
    if option.value is False:
        return f"leave out {flag}"
    if option.value is None or option.value is True:
        return flag
    return f"{flag} {option.value}"
