"""Quality comparison job: how far a converted or quantized model drifts from its source.

Both models read the same tokens (the reference's tokenization, which the candidate must
reproduce). The reference runs first and its log-probabilities go to a temporary file, then
it is freed and the candidate runs, so peak memory is one model, not two.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import psutil

from app.core.errors import InsufficientResourcesError, OptionError, OptionFact, UnsupportedError
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.formats.scan import inspect_path
from app.core.generate.backends.base import (
    BackendChoiceName,
    DTypeName,
    LoadedModel,
    LoadOptions,
)
from app.core.generate.compare_metrics import (
    Window,
    kl_divergence,
    log_softmax,
    noise_floor,
    perplexity,
    plan_windows,
    verdict,
)
from app.core.generate.compare_severity import Severity, severity_of
from app.core.generate.loader import BackendChoice, choose_backend, open_model, open_tokenizer
from app.core.generate.memory import PeakMemory
from app.core.jobs import ProgressUnit, Reporter, check_cancel
from app.core.resources import probe_disk

SAMPLE_FILE = "pride_and_prejudice_ch1.txt"
SAMPLE_SOURCE = ("bundled sample: Jane Austen, Pride and Prejudice (1813), opening of "
                 "chapter 1 (public domain)")
DEFAULT_WINDOW = 512


def sample_text() -> str:
    return resources.files("app.core.generate.data").joinpath(SAMPLE_FILE).read_text("utf-8")


@dataclass(frozen=True)
class CompareResult:
    ppl_ref: float
    ppl_candidate: float
    kl_mean: float
    kl_p99: float
    top1_agreement: float
    n_tokens: int  # scored positions
    per_token_kl: tuple[float, ...]
    verdict: str
    reference: str
    candidate: str
    ref_backend: str
    candidate_backend: str
    text_source: str
    window_tokens: int
    n_windows: int
    peak_bytes: int
    notes: tuple[str, ...] = ()
    reference_dtype: str = "auto"  # what the reference was computed in ("auto": its runtime's)
    noise_floor: float = 0.0  # the smallest mean KL this comparison can tell from zero

    @property
    def severity(self) -> Severity:
        """The verdict's category, from the thresholds in compare_severity.py."""
        return severity_of(self.kl_mean, self.top1_agreement, self.noise_floor)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity
        data["per_token_kl"] = list(self.per_token_kl)
        data["notes"] = list(self.notes)
        return data


@dataclass
class _Scores:
    """What one pass over the text leaves behind."""

    nll: np.ndarray
    n_vocab: int
    backend: str


@dataclass(frozen=True)
class CompareRequest:
    """Job: perplexity of both models, KL of the candidate from the reference, top-1 agreement."""

    reference: Path
    candidate: Path
    text: str | None = None  # None: `text_file`, or else the bundled public-domain sample
    text_source: str | None = None  # where the text came from, for the report
    text_file: Path | None = None  # read when the job runs (on the worker, not the caller)
    window_tokens: int = DEFAULT_WINDOW
    ref_backend: BackendChoiceName = "auto"
    candidate_backend: BackendChoiceName = "auto"
    dtype: DTypeName = "auto"
    trust_remote_code: bool = False
    use_gpu: bool = True
    progress_unit: ProgressUnit = "tokens"
    # Loads torch or a native runtime and a whole model: a crash must not take the caller.
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return f"Compare {Path(self.candidate).name} with {Path(self.reference).name}"

    def run(self, reporter: Reporter) -> CompareResult:
        return _Comparison(self, reporter).run()


@dataclass
class _Comparison:
    """One run of a `CompareRequest`, with the notes it collects on the way."""

    request: CompareRequest
    reporter: Reporter
    notes: list[str] = field(default_factory=list)
    reference_dtype: DTypeName = "auto"

    def _options(self, backend: BackendChoiceName, window: int,
                 dtype: DTypeName | None = None) -> LoadOptions:
        req = self.request
        return LoadOptions(backend=backend, dtype=dtype or req.dtype,
                           trust_remote_code=req.trust_remote_code, use_gpu=req.use_gpu,
                           context_tokens=window, logits_for_all_positions=True)

    def run(self) -> CompareResult:
        req, reporter = self.request, self.reporter
        if req.text is not None:
            text = req.text
        elif req.text_file is not None:
            text = text_from_file(req.text_file)
        else:
            text = sample_text()
        if not text.strip():
            raise OptionError("the comparison text is empty")
        if req.window_tokens < 16:
            raise OptionError(f"the window must hold at least 16 tokens, not "
                              f"{req.window_tokens}")
        ref_info, cand_info = inspect_path(req.reference), inspect_path(req.candidate)
        ref_choice = choose_backend(ref_info, req.ref_backend)
        cand_choice = choose_backend(cand_info, req.candidate_backend)
        window = min(req.window_tokens, *(i.context_length for i in (ref_info, cand_info)
                                           if i.context_length))
        ids = self._agreed_tokens(text, ref_info, ref_choice, cand_info, cand_choice, window)
        self.reference_dtype = self._reference_dtype(ref_info, ref_choice, window)
        windows = plan_windows(len(ids), window)
        n_scored = len(ids) - 1
        reporter.log("info", f"{len(ids)} tokens in {len(windows)} window(s) of up to "
                             f"{window} tokens")
        reporter.progress(0, 2 * n_scored, f"0 of {2 * len(windows)} windows: loading")
        with tempfile.TemporaryDirectory(prefix="modelyard-compare-") as tmp, \
                PeakMemory() as memory:
            store = Path(tmp) / "reference-logprobs.f32"
            ref = self._run_reference(ref_info, ref_choice, ids, windows, window, store)
            check_cancel(reporter)
            cand, kl, top1 = self._run_candidate(cand_info, cand_choice, ids, windows, window,
                                                 store, ref.n_vocab)
        label = cand_info.quantization or cand_info.name
        kl_mean = float(kl.mean())
        top1_agreement = float(top1.mean())
        floor = noise_floor(self.reference_dtype if ref.backend.startswith("transformers")
                            else "float32", ref.backend, cand.backend)
        result = CompareResult(
            ppl_ref=perplexity(ref.nll), ppl_candidate=perplexity(cand.nll), kl_mean=kl_mean,
            kl_p99=float(np.percentile(kl, 99)), top1_agreement=top1_agreement,
            n_tokens=n_scored, per_token_kl=tuple(float(v) for v in kl),
            verdict=verdict(label, kl_mean, top1_agreement, floor),
            reference=str(req.reference),
            candidate=str(req.candidate), ref_backend=ref.backend,
            candidate_backend=cand.backend,
            text_source=req.text_source or (str(req.text_file) if req.text_file else
                                            SAMPLE_SOURCE if req.text is None else "text"),
            window_tokens=window, n_windows=len(windows), peak_bytes=memory.peak_rss,
            notes=tuple(self.notes), reference_dtype=self.reference_dtype, noise_floor=floor)
        reporter.log("info", result.verdict)
        return result

    def _reference_dtype(self, info: ModelInfo, choice: BackendChoice,
                         window: int) -> DTypeName:
        """float32 when it fits: a bfloat16 reference's own noise (KL ~1e-3) hides most of a
        Q8_0's error. bfloat16 when float32 does not fit, saying so."""
        if self.request.dtype != "auto" or choice.name != "transformers":
            return self.request.dtype
        from app.core.estimate.transformers_load import estimate_hf_load
        from app.core.estimate.verdict import usable
        from app.core.resources import probe_gpus

        needed = estimate_hf_load(info, window, dtype="float32").ram.total
        room = usable(int(psutil.virtual_memory().available))
        if self.request.use_gpu:
            room += sum(usable(g.free_bytes) for g in probe_gpus()[0])
        if needed <= room:
            return "float32"
        self._note(f"the reference runs in bfloat16: float32 needs about "
                   f"{format_bytes(needed)}, {format_bytes(room)} is usable; differences below "
                   "a mean KL of about 1e-3 cannot be resolved")
        return "bfloat16"

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self.reporter.log("warning", text)

    def _agreed_tokens(self, text: str, ref_info: ModelInfo, ref_choice: BackendChoice,
                       cand_info: ModelInfo, cand_choice: BackendChoice,
                       window: int) -> list[int]:
        """The reference's tokens, after checking the candidate's tokenizer gives the same."""
        req = self.request
        self.reporter.progress(0, 0, "reading both tokenizers")
        ref_tok = open_tokenizer(ref_info, ref_choice, self._options(req.ref_backend, window))
        try:
            ref_prefix, ref_ids = ref_tok.special_prefix(), ref_tok.encode(text)
        finally:
            ref_tok.close()
        cand_tok = open_tokenizer(cand_info, cand_choice,
                                  self._options(req.candidate_backend, window))
        try:
            cand_prefix, cand_ids = cand_tok.special_prefix(), cand_tok.encode(text)
        finally:
            cand_tok.close()
        if cand_ids != ref_ids:
            pairs = enumerate(zip(ref_ids, cand_ids, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), min(len(ref_ids), len(cand_ids)))
            ref_at = ref_ids[at] if at < len(ref_ids) else "end"
            cand_at = cand_ids[at] if at < len(cand_ids) else "end"
            raise UnsupportedError(
                f"the two models tokenize the text differently from token {at} on (reference "
                f"{ref_at}, candidate {cand_at}; {len(ref_ids)} vs {len(cand_ids)} tokens), so "
                "their predictions cannot be compared position by position",
                path=req.candidate,
                hint="compare a model with its own conversion or quantization, which share "
                     "the tokenizer; a converted tokenizer that differs is itself a bug to fix")
        if cand_prefix != ref_prefix:
            self._note(f"the reference starts texts with {ref_prefix or 'no'} "
                                 f"special token(s), the candidate with {cand_prefix or 'none'};"
                                 " both read the reference's")
        ids = ref_prefix + ref_ids
        if len(ids) < 2:
            raise OptionError("the comparison text is too short: it needs at least 2 tokens")
        return ids

    def _load(self, info: ModelInfo, choice: BackendChoice, backend: BackendChoiceName,
              window: int, role: str, dtype: DTypeName | None = None) -> LoadedModel:
        reporter = self.reporter
        in_dtype = f" in {dtype}" if dtype and dtype != "auto" else ""
        reporter.log("info", f"{role}: {info.name} with {choice.name}{in_dtype} ({choice.reason})")
        model = open_model(info, choice, self._options(backend, window, dtype))
        reporter.log("info", f"{role} on {model.device}: {model.placement_text}")
        return model

    def _run_reference(self, info: ModelInfo, choice: BackendChoice, ids: list[int],
                       windows: list[Window], window: int, store: Path) -> _Scores:
        reporter = self.reporter
        model = self._load(info, choice, self.request.ref_backend, window, "reference",
                           self.reference_dtype)
        try:
            n_vocab = model.n_vocab
            n_rows = len(ids) - 1
            needed = n_rows * n_vocab * 4
            free = probe_disk(store.parent).free_bytes
            if needed > free:
                raise InsufficientResourcesError(
                    f"the reference's probabilities need {format_bytes(needed)} of temporary "
                    f"disk, {format_bytes(free)} is free", needed_bytes=needed,
                    available_bytes=free, path=store.parent,
                    hint="compare a shorter text or free disk space (or set TMPDIR)")
            logprobs = np.lib.format.open_memmap(store, mode="w+", dtype=np.float32,
                                                 shape=(n_rows, n_vocab))
            nll = np.empty(n_rows, dtype=np.float64)
            for index, win in enumerate(windows):
                check_cancel(reporter)
                rows = log_softmax(model.all_logits(ids[win.start:win.end])[win.rows])
                targets = np.array(list(win.targets))
                logprobs[targets - 1] = rows
                nll[targets - 1] = -rows[np.arange(len(targets)), ids_at(ids, targets)]
                reporter.progress(win.end, 2 * n_rows,
                                  f"reference, window {index + 1} of {len(windows)}")
            logprobs.flush()
            del logprobs
            return _Scores(nll, n_vocab, model.backend)
        finally:
            model.close()

    def _run_candidate(self, info: ModelInfo, choice: BackendChoice, ids: list[int],
                       windows: list[Window], window: int, store: Path,
                       ref_vocab: int) -> tuple[_Scores, np.ndarray, np.ndarray]:
        reporter = self.reporter
        model = self._load(info, choice, self.request.candidate_backend, window, "candidate")
        try:
            vocab = min(ref_vocab, model.n_vocab)
            if model.n_vocab != ref_vocab:
                self._note(f"the reference has {ref_vocab} output tokens and the "
                                     f"candidate {model.n_vocab}; both are compared over the "
                                     f"first {vocab}")
            ref_logprobs = np.load(store, mmap_mode="r")
            n_rows = len(ids) - 1
            nll = np.empty(n_rows, dtype=np.float64)
            kl = np.empty(n_rows, dtype=np.float64)
            top1 = np.empty(n_rows, dtype=bool)
            for index, win in enumerate(windows):
                check_cancel(reporter)
                logits = model.all_logits(ids[win.start:win.end])[win.rows, :vocab]
                cand = log_softmax(logits)
                # KL against the stored reference at the precision it was stored in, so that
                # equal models give exactly 0 (a float64 candidate would show ~1e-9 of noise).
                cand_stored = cand.astype(np.float32).astype(np.float64)
                targets = np.array(list(win.targets))
                ref = np.asarray(ref_logprobs[targets - 1, :vocab], dtype=np.float64)
                if vocab != ref_vocab:
                    ref = log_softmax(ref)
                kl[targets - 1] = kl_divergence(ref, cand_stored)
                top1[targets - 1] = ref.argmax(axis=-1) == cand_stored.argmax(axis=-1)
                nll[targets - 1] = -cand[np.arange(len(targets)), ids_at(ids, targets)]
                reporter.progress(n_rows + win.end, 2 * n_rows,
                                  f"candidate, window {index + 1} of {len(windows)}")
            del ref_logprobs
            return _Scores(nll, model.n_vocab, model.backend), kl, top1
        finally:
            model.close()


def ids_at(ids: list[int], positions: np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64)[positions]


def text_from_file(path: Path) -> str:
    """A user's comparison text; a clear error when it is not readable UTF-8 text."""
    from app.core.errors import BadInputError

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError("no such file", path=path) from None
    except UnicodeDecodeError:
        raise BadInputError("not UTF-8 text", path=path,
                            hint="give a plain text file",
                            option=OptionFact("text_file")) from None
    except OSError as exc:
        raise BadInputError(f"cannot read ({exc.strerror or exc})", path=path) from None
