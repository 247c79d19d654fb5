"""MoE expert layout: stacked ↔ split by moving quantized bytes, proved on files llama.cpp wrote.

A tiny Mixtral (hidden 256, so K-quants apply) is converted by Modelyard to F16 (stacked) and
quantized by llama.cpp's own quantizer to Q4_K_M; stacked → split → stacked must give back the
same file byte for byte, each per-expert tensor must be its slice of the stacked tensor, and
llama.cpp must give the same greedy tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import factories
from app.core.convert import ConvertRequest
from app.core.convert.metadata import read_gguf_entries
from app.core.convert.relayout import RelayoutRequest, plan_relayout
from app.core.errors import FormatError, OptionError, UnsupportedError
from app.core.generate.backends.llama_cpp import open_llama
from app.core.jobs import RecordingReporter, run_job


def relayout(source: Path, target: Path, experts: str,
             split_max_bytes: int | None = None) -> RecordingReporter:
    reporter = RecordingReporter()
    result = run_job(RelayoutRequest(source, target, experts, split_max_bytes=split_max_bytes),
                     reporter)
    assert result.status == "done", result.error
    return reporter


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mixtral_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Mixtral: Modelyard's F16 GGUF and llama.cpp's Q4_K_M of it (both stacked)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is absent")
    root = tmp_path_factory.mktemp("mixtral")
    source = factories.make_hf_model(root / "tiny-mixtral", "mixtral", hidden_size=256,
                                     intermediate_size=256)
    f16 = root / "mixtral-F16.gguf"
    ConvertRequest(source, f16, "F16", device="cpu").run(RecordingReporter())
    q4 = root / "mixtral-Q4_K_M.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(q4).encode(),
                                          ctypes.byref(params)) == 0
    return {"F16": f16, "Q4_K_M": q4}


@pytest.mark.parametrize("qtype", ["F16", "Q4_K_M"])
def test_stacked_split_stacked_is_byte_identical(qtype: str, mixtral_ggufs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    source = mixtral_ggufs[qtype]
    before = digest(source)
    split, back = tmp_path / "split.gguf", tmp_path / "back.gguf"
    relayout(source, split, "split")
    relayout(split, back, "stacked")
    assert back.read_bytes() == source.read_bytes()
    assert digest(source) == before  # the input is only read
    # Metadata: every key copied unchanged; only the tensor list differs.
    assert read_gguf_entries(split) == read_gguf_entries(source)
    names = [t.name for t in gguf.GGUFReader(split).tensors]
    assert not [n for n in names if n.endswith("_exps.weight")]
    assert len([n for n in names if is_split_expert(n)]) == 2 * 3 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.gguf", "split.gguf"]


def is_split_expert(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 5 and parts[2] in ("ffn_gate", "ffn_up", "ffn_down") \
        and parts[3].isdigit()


@pytest.mark.parametrize("qtype", ["F16", "Q4_K_M"])
def test_every_expert_is_its_slice_of_the_stacked_tensor(qtype: str,
                                                         mixtral_ggufs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    source = mixtral_ggufs[qtype]
    split = tmp_path / "split.gguf"
    relayout(source, split, "split")
    stacked = {t.name: t for t in gguf.GGUFReader(source).tensors}
    experts = {t.name: t for t in gguf.GGUFReader(split).tensors}
    checked = 0
    for name, tensor in stacked.items():
        if not name.endswith("_exps.weight"):
            assert np.asarray(experts[name].data).tobytes() == np.asarray(tensor.data).tobytes()
            continue
        layer, kind = name.split(".")[1], name.split(".")[2].removesuffix("_exps")
        raw = np.asarray(tensor.data).tobytes()
        size = len(raw) // 4
        for expert in range(4):
            part = experts[f"blk.{layer}.{kind}.{expert}.weight"]
            assert part.tensor_type == tensor.tensor_type
            assert list(part.shape) == list(tensor.shape[:2])
            assert np.asarray(part.data).tobytes() == raw[expert * size:(expert + 1) * size]
            checked += 1
    assert checked == 24


def test_llama_cpp_gives_the_same_tokens_after_the_round_trip(mixtral_ggufs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    source = mixtral_ggufs["Q4_K_M"]
    split, back = tmp_path / "split.gguf", tmp_path / "back.gguf"
    relayout(source, split, "split")
    relayout(split, back, "stacked")

    def greedy(path: Path) -> list[int]:
        llm = open_llama(path, n_ctx=128, n_threads=2)
        prompt = llm.tokenize(b"The capital of France", add_bos=False)
        tokens = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            tokens.append(token)
            if len(tokens) == 8:
                break
        return tokens

    expected = greedy(source)
    assert len(expected) == 8
    assert greedy(back) == expected


# Hand-made files for what a converter never writes: odd types, missing experts, bad counts.

def moe_gguf(path: Path, *, layout: str, expert_count: int = 4, n_stored: int = 4,
             skip: tuple[int, int] | None = None, odd_f16: int | None = None) -> Path:
    """One layer of Mixtral-shaped experts (n_embd 32, n_ff 64): Q8_0 experts, stacked or split;
    `skip` (kind index, expert) leaves one expert out, `odd_f16` stores that expert as F16."""
    rng = np.random.default_rng(5)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_expert_count(expert_count)
    writer.add_expert_used_count(2)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    writer.add_tensor("blk.0.ffn_gate_inp.weight",
                      rng.standard_normal((expert_count, 32)).astype(np.float32))
    q8 = gguf.GGMLQuantizationType.Q8_0
    for k, (kind, shape) in enumerate((("gate", (64, 32)), ("up", (64, 32)),
                                       ("down", (32, 64)))):
        values = rng.standard_normal((n_stored, *shape)).astype(np.float32)
        if layout == "stacked":
            writer.add_tensor(f"blk.0.ffn_{kind}_exps.weight", gguf.quants.quantize(values, q8),
                              raw_dtype=q8)
            continue
        for expert in range(n_stored):
            if skip == (k, expert):
                continue
            name = f"blk.0.ffn_{kind}.{expert}.weight"
            if expert == odd_f16:
                writer.add_tensor(name, values[expert].astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(values[expert], q8), raw_dtype=q8)
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    factories.finish_gguf(writer)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "relayout", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case, experts, message, tensor", [
    ("dense", "split", "no expert tensors", None),
    ("same", "split", "already split", None),
    ("count", "split", "expert_count is 4", "blk.0.ffn_gate_exps.weight"),
    ("missing", "stacked", "1 of 4 experts are missing", "blk.0.ffn_up.2.weight"),
])
def test_bad_input_exits_2_and_writes_nothing(case: str, experts: str, message: str,
                                               tensor: str | None, tmp_path: Path) -> None:
    source = {
        "dense": lambda p: factories.make_gguf(p),
        "same": lambda p: moe_gguf(p, layout="split"),
        "count": lambda p: moe_gguf(p, layout="stacked", n_stored=5),
        "missing": lambda p: moe_gguf(p, layout="split", skip=(1, 2)),
    }[case](tmp_path / "in.gguf")
    before = digest(source)
    out = tmp_path / "out.gguf"
    done = cli(str(source), "-o", str(out), "--experts", experts)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    if tensor:
        assert repr(tensor) in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]
    assert digest(source) == before


def test_nonsense_layout_is_refused(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="layout 'sideways' is not stacked or split"):
        plan_relayout(tiny_ggufs["moe-stacked"], tmp_path / "x.gguf", experts="sideways")
    with pytest.raises(UnsupportedError, match="relayout applies to GGUF"):
        plan_relayout(factories.make_hf_model(tmp_path / "hf", with_tokenizer=False),
                      tmp_path / "x.gguf", experts="split")
    from app.core.convert.gguf_shards import parse_split_size

    assert (parse_split_size("500M"), parse_split_size("4G"), parse_split_size("123")) == (
        500 * 1000**2, 4 * 1000**3, 123)
    with pytest.raises(OptionError, match="shard size 'lots' is not a size"):
        parse_split_size("lots")
    with pytest.raises(FormatError, match="expert_count"):
        plan_relayout(moe_gguf(tmp_path / "m.gguf", layout="stacked", expert_count=3),
                      tmp_path / "y.gguf", experts="split")


def test_experts_of_different_types_are_requantized_to_the_common_one(tmp_path: Path) -> None:
    source = moe_gguf(tmp_path / "odd.gguf", layout="split", odd_f16=1)
    out = tmp_path / "stacked.gguf"
    reporter = relayout(source, out, "stacked")
    warnings = " ".join(reporter.messages("warning"))
    assert "blk.0.ffn_gate.1.weight" in warnings and "requantized to Q8_0" in warnings
    ins = {t.name: t for t in gguf.GGUFReader(source).tensors}
    outs = {t.name: t for t in gguf.GGUFReader(out).tensors}
    for kind in ("gate", "up", "down"):
        stacked = outs[f"blk.0.ffn_{kind}_exps.weight"]
        assert stacked.tensor_type == gguf.GGMLQuantizationType.Q8_0
        raw = np.asarray(stacked.data).tobytes()
        size = len(raw) // 4
        for expert in range(4):
            piece = raw[expert * size:(expert + 1) * size]
            original = ins[f"blk.0.ffn_{kind}.{expert}.weight"]
            if expert == 1:  # F16 → Q8_0, as gguf-py (llama-quantize's bytes) quantizes it
                values = np.asarray(original.data).astype(np.float32)
                expected = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
                assert piece == expected.tobytes()
            else:
                assert piece == np.asarray(original.data).tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.gguf", "stacked.gguf"]


def test_split_shards_are_read_kept_or_joined(tmp_path: Path) -> None:
    """A stacked model in two gguf-split shards: by default two split-layout shards, each
    tensor in the shard its bytes come from; with a large enough maximum, one file."""
    whole = moe_gguf(tmp_path / "whole.gguf", layout="stacked")
    reader = gguf.GGUFReader(whole)
    tensors = list(reader.tensors)
    shards = []
    for index, part in enumerate((tensors[:3], tensors[3:])):
        path = tmp_path / f"m-{index + 1:05d}-of-00002.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_uint16("split.no", index)
        writer.add_uint16("split.count", 2)
        writer.add_int32("split.tensors.count", len(tensors))
        if index == 0:
            writer.add_block_count(1)
            writer.add_expert_count(4)
            writer.add_expert_used_count(2)
        for tensor in part:
            data = np.asarray(tensor.data)  # quantized data comes as bytes per row
            writer.add_tensor(tensor.name, data,
                              raw_dtype=tensor.tensor_type if data.dtype == np.uint8 else None)
        factories.finish_gguf(writer)
        shards.append(path)
    kept = relayout(shards[0], tmp_path / "kept.gguf", "split")
    assert any("written as 2 shards" in m for m in kept.messages("info"))
    first, second = (gguf.GGUFReader(tmp_path / f"kept-0000{i}-of-00002.gguf") for i in (1, 2))
    assert len(first.tensors) == 2 + 4 and len(second.tensors) == 2 * 4 + 1
    assert [f.fields["split.no"].contents() for f in (first, second)] == [0, 1]
    assert second.fields["split.tensors.count"].contents() == 3 + 3 * 4
    assert first.fields["llama.expert_count"].contents() == 4
    assert "llama.expert_count" not in second.fields
    out = tmp_path / "joined.gguf"
    reporter = relayout(shards[0], out, "split", split_max_bytes=10**9)
    assert any("2 split shards joined" in m for m in reporter.messages("info"))
    joined = gguf.GGUFReader(out)
    assert len(joined.tensors) == 3 + 3 * 4
    assert "split.count" not in joined.fields
    assert joined.fields["llama.expert_count"].contents() == 4


def test_cancel_leaves_nothing(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    reporter = RecordingReporter()
    reporter.token.cancel()
    result = run_job(RelayoutRequest(tiny_ggufs["moe-stacked"], tmp_path / "o.gguf", "split"),
                     reporter)
    assert result.status == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_split_max_size_shards_round_trip(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    """Stacked → split in shards of at most 300 kB → stacked (same shards) → one file: the
    source again, byte for byte."""
    from app.core.formats.scan import inspect_path

    source = tiny_ggufs["moe-stacked"]
    relayout(source, tmp_path / "split.gguf", "split", split_max_bytes=300_000)
    shards = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(shards) > 2
    assert all(p.stat().st_size < 300_000 + 64 * 1024 for p in shards)  # data plus header
    model = inspect_path(shards[0])
    assert model.moe is not None and model.moe.layout == "split"
    assert [p.kind for p in model.problems] == ["expert-layout"]  # the shards are one model
    relayout(shards[0], tmp_path / "back.gguf", "stacked")
    assert len(list(tmp_path.glob("back-*-of-*.gguf"))) == len(shards)
    first_back = sorted(tmp_path.glob("back-*-of-*.gguf"))[0]
    relayout(first_back, tmp_path / "one.gguf", "split", split_max_bytes=10**9)
    relayout(tmp_path / "one.gguf", tmp_path / "final.gguf", "stacked")
    assert (tmp_path / "final.gguf").read_bytes() == source.read_bytes()


def test_a_failing_shard_removes_the_ones_written(tiny_ggufs: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.convert import relayout as module
    from app.core.errors import JobError

    real = module.execute_plan
    calls = []

    def fail_third(plan, reporter, check_memory=True):  # type: ignore[no-untyped-def]
        calls.append(plan.target)
        if len(calls) == 3:
            raise JobError("the disk is full; nothing was kept", path=plan.target)
        return real(plan, reporter, check_memory)

    monkeypatch.setattr(module, "execute_plan", fail_third)
    result = run_job(RelayoutRequest(tiny_ggufs["moe-stacked"], tmp_path / "s.gguf", "split",
                                     split_max_bytes=300_000), RecordingReporter())
    assert result.status == "failed" and len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_ggufs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    import json

    out = tmp_path / "o.gguf"
    done = cli(str(tiny_ggufs["moe-split"]), "-o", str(out), "--experts", "stacked",
               "--dry-run")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["experts"] == "stacked" and plan["outputs"] == [str(out)]
    stacked = [t for t in plan["plans"][0]["tensors"] if t["name"].endswith("_exps.weight")]
    assert len(stacked) == 2 * 3 and all(t["copy"] for t in stacked)
    assert stacked[0]["sources"] == [f"blk.0.ffn_gate.{e}.weight" for e in range(4)]
    assert list(tmp_path.iterdir()) == []


def test_a_mix_of_layouts_is_repaired(tmp_path: Path) -> None:
    """Stacked gate, per-expert up and down: a file no runtime loads, made whole either way."""
    from app.core.formats.scan import inspect_path

    stacked = gguf.GGUFReader(moe_gguf(tmp_path / "stacked.gguf", layout="stacked"))
    split = gguf.GGUFReader(moe_gguf(tmp_path / "split.gguf", layout="split"))
    writer = gguf.GGUFWriter(str(tmp_path / "mixed.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_expert_count(4)
    writer.add_expert_used_count(2)
    for tensor in [*stacked.tensors[:3], *split.tensors[6:]]:
        data = np.asarray(tensor.data)
        writer.add_tensor(tensor.name, data,
                          raw_dtype=tensor.tensor_type if data.dtype == np.uint8 else None)
    factories.finish_gguf(writer)
    mixed = inspect_path(tmp_path / "mixed.gguf")
    assert mixed.moe is not None and mixed.moe.layout == "mixed"
    assert [p.kind for p in mixed.fatal_problems] == ["expert-layout"]
    relayout(tmp_path / "mixed.gguf", tmp_path / "all-stacked.gguf", "stacked")
    relayout(tmp_path / "mixed.gguf", tmp_path / "all-split.gguf", "split")
    for name, layout in (("all-stacked", "stacked"), ("all-split", "split")):
        model = inspect_path(tmp_path / f"{name}.gguf")
        assert model.moe is not None and model.moe.layout == layout
        assert not model.fatal_problems
