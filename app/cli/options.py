"""How the command line words a job's option: as the flag that sets it."""

from __future__ import annotations

import argparse

from app.core.errors import OptionFact

FLAGS = {"backend": "--backend", "device": "--device", "keep_type": "--keep-type",
         "text_file": "--text", "out_type": "--type", "to": "--to",
         "gpu_layers": "--gpu-layers", "context": "--ctx", "vram": "--vram", "ram": "--ram",
         "overwrite": "--overwrite", "n_gpu_layers": "--n-gpu-layers",
         "trust_remote_code": "--trust-remote-code", "require_tokenizer": "--require-tokenizer",
         "split_max_size": "--split-max-size", "experts": "--experts",
         "chunk_size": "--chunk-size", "max_chunks": "--chunks",
         "tensor_types": "--tensor-type", "output_tensor_type": "--output-tensor-type",
         "token_embedding_type": "--token-embedding-type", "target_size": "--target-size",
         "shard_bytes": "--shard-size"}


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


def add_device_option(parser: argparse.ArgumentParser, work: str) -> None:
    """`--device` as every job that computes takes it (the core checks the value)."""
    parser.add_argument("--device", default="auto", metavar="cpu|cuda|cuda:N|auto",
                        help=f"where to {work}: auto = CUDA when the driver reports a GPU and "
                             "torch is a CUDA build")


def add_output_job_flags(parser: argparse.ArgumentParser, *, memory_check: bool = True) -> None:
    """The flags every command that writes a model file shares."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    if memory_check:
        parser.add_argument("--ignore-memory-check", action="store_true",
                            help="start even when the estimated peak memory exceeds what is "
                                 "free (the disk-space check still applies)")
    parser.add_argument("--json-progress", action="store_true",
                        help="JSON lines on stdout: progress, log and a final result event")
