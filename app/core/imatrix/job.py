"""The imatrix job: run an HF model over a calibration text in chunks, collect the squared
activations of every weight matrix, and write them in llama.cpp's imatrix GGUF format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from app.core.errors import BadInputError, OptionError, OptionFact, UnsupportedError
from app.core.jobs import ProgressUnit, Reporter, atomic_output, check_cancel

DEFAULT_CHUNK_SIZE = 512  # llama-imatrix's default context


@dataclass(frozen=True)
class ImatrixResult:
    output: Path
    entries: int
    chunks: int
    tokens: int

    def to_json(self) -> dict[str, object]:
        return {"output": str(self.output), "entries": self.entries, "chunks": self.chunks,
                "tokens": self.tokens}


@dataclass(frozen=True)
class ImatrixRequest:
    """Job: an importance matrix for the HF model `source` from the text file `text`."""

    source: Path
    text: Path
    target: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_chunks: int | None = None  # None: every whole chunk of the text
    use_gpu: bool = True
    overwrite: bool = False
    progress_unit: ProgressUnit = "items"
    # Loads torch and whole tensors: a crash must not take the window with it.
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return f"Importance matrix of {Path(self.source).name}"

    def run(self, reporter: Reporter) -> ImatrixResult:
        from app.core.formats.scan import inspect_path

        if self.chunk_size < 16:
            # llama-imatrix ignores batches of fewer than 16 tokens.
            raise OptionError(f"chunks of {self.chunk_size} tokens are too short: use at least 16",
                              option=OptionFact("chunk_size"))
        if self.max_chunks is not None and self.max_chunks < 1:
            raise OptionError(f"{self.max_chunks} chunks: use at least 1",
                              option=OptionFact("max_chunks"))
        info = inspect_path(self.source)
        if info.format != "hf":
            raise UnsupportedError("an importance matrix is computed from a Hugging Face "
                                   f"model folder, not a {info.format} model", path=info.path)
        from app.core.generate.backends.hf import load_tokenizer

        text = _read_text(self.text)
        # The text is split before the model loads, so a text too short fails at once.
        chunks = _chunks(load_tokenizer(info), text, self.chunk_size, self.text)
        if self.max_chunks is not None:
            chunks = chunks[:self.max_chunks]
        check_cancel(reporter)
        model = _load(info, self.use_gpu, reporter)
        try:
            return self._collect(model, info, chunks, reporter)
        finally:
            model.close()

    def _collect(self, loaded: Any, info: Any, chunks: list[list[int]],
                 reporter: Reporter) -> ImatrixResult:
        import torch

        from app.core.formats.hf_config import model_type
        from app.core.imatrix.collect import ActivationCollector
        from app.core.quant.imatrix_file import write_imatrix

        n_layer = int(info.n_layers or loaded.model.config.num_hidden_layers)
        collector = ActivationCollector(loaded.model, model_type(info.metadata) or "", n_layer)
        reporter.log("info", f"{len(chunks)} chunks of {self.chunk_size} tokens on "
                             f"{loaded.device}")
        try:
            for index, chunk in enumerate(chunks):
                check_cancel(reporter)
                ids = torch.tensor([chunk], dtype=torch.long, device=loaded.input_device)
                with torch.inference_mode():
                    loaded.model(input_ids=ids, use_cache=False)
                reporter.progress(index + 1, len(chunks), f"chunk {index + 1}/{len(chunks)}")
            sums, counts = collector.stats()
        finally:
            collector.close()
        check_cancel(reporter)
        with atomic_output(self.target, overwrite=self.overwrite) as part:
            write_imatrix(part, sums, counts, datasets=[str(self.text)],
                          chunk_count=len(chunks), chunk_size=self.chunk_size)
        reporter.log("info", f"wrote {self.target}: {len(sums)} matrices from "
                             f"{len(chunks) * self.chunk_size} tokens")
        return ImatrixResult(self.target, len(sums), len(chunks), len(chunks) * self.chunk_size)


def _read_text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BadInputError(f"cannot read the calibration text ({exc.strerror or exc})",
                            path=path) from None
    if not text.strip():
        raise BadInputError("the calibration text is empty", path=path)
    return text


def _load(info: Any, use_gpu: bool, reporter: Reporter) -> Any:
    import torch

    from app.core.generate.backends.base import LoadOptions
    from app.core.generate.backends.hf import load_transformers_model

    reporter.log("info", f"loading {info.path.name} with transformers")
    # float32 on the CPU: the sums of squares want the precision, and CPUs have no fast bf16.
    dtype = "auto" if use_gpu and torch.cuda.is_available() else "float32"
    return load_transformers_model(info, LoadOptions(backend="transformers", dtype=dtype,
                                                     use_gpu=use_gpu and dtype == "auto"))


def _chunks(tokenizer: Any, text: str, size: int, path: Path) -> list[list[int]]:
    """Whole chunks of `size` tokens; like llama-imatrix, each starts with the BOS token (in
    place of the chunk's first token) when the model has one."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) < size:
        raise BadInputError(f"the calibration text has {len(ids)} tokens, fewer than one chunk "
                            f"of {size}", path=path, hint="use a longer text or smaller chunks")
    bos = getattr(tokenizer, "bos_token_id", None)
    chunks = []
    for start in range(0, len(ids) - size + 1, size):
        chunk = ids[start:start + size]
        if isinstance(bos, int):
            chunk[0] = bos
        chunks.append(chunk)
    return chunks
