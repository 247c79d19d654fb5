"""Test generation through transformers on tiny HF checkpoints, and clear load failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.core.errors import FormatError, JobError
from app.core.formats.scan import inspect_path
from app.core.generate.backends.hf import explicit_device_map, load_pretrained
from app.core.generate.placement import DeviceBudget, hf_placement_units, plan_placement
from app.core.generate.request import GenerateRequest, GenerateResult
from app.core.jobs import RecordingReporter, run_job
from factories import CancellingReporter, drop_tensors


def generate(path: Path, **kwargs: object) -> GenerateResult:
    reporter = RecordingReporter()
    result = run_job(GenerateRequest(path, "The capital of France", **kwargs), reporter)
    assert result.status == "done", result.error
    return result.value


def test_greedy_generation_runs_and_is_deterministic(tiny_models: dict[str, Path]) -> None:
    first = generate(tiny_models["llama"], max_tokens=12)
    second = generate(tiny_models["llama"], max_tokens=12)
    assert first.token_ids == second.token_ids and first.text == second.text
    assert first.backend == "transformers" and first.device == "cpu"
    assert first.prompt_format == "chat template"  # the tiny tokenizer has one
    assert first.n_prompt_tokens > 5 and first.load_s > 0 and first.peak_bytes > 10_000_000
    assert first.seed is None
    if first.stop_reason == "max_tokens":
        assert first.n_generated == 12


def test_seeded_sampling_is_reproducible_and_the_seed_matters(
        tiny_models: dict[str, Path]) -> None:
    a = generate(tiny_models["qwen2"], max_tokens=16, temperature=1.5, seed=7)
    b = generate(tiny_models["qwen2"], max_tokens=16, temperature=1.5, seed=7)
    c = generate(tiny_models["qwen2"], max_tokens=16, temperature=1.5, seed=8)
    assert a.token_ids == b.token_ids and a.seed == 7
    assert a.token_ids != c.token_ids


def test_streamed_pieces_arrive_in_order_and_join_to_the_text(
        tiny_models: dict[str, Path]) -> None:
    pieces: list[str] = []
    result = generate(tiny_models["mistral"], max_tokens=20, temperature=1.0, seed=3,
                      on_text=pieces.append)
    assert len(pieces) >= 2
    assert "".join(pieces) == result.text
    assert result.n_generated >= 2


def test_cancel_stops_within_one_token(tiny_models: dict[str, Path]) -> None:
    pieces: list[str] = []
    reporter = CancellingReporter(after=3)
    request = GenerateRequest(tiny_models["llama"], "hello", max_tokens=50, temperature=1.0,
                              seed=1, on_text=pieces.append)
    result = run_job(request, reporter)
    assert result.status == "cancelled"
    assert reporter.tokens_seen[-1] == 3  # no token after the one that asked to stop


def test_bitsandbytes_checkpoint_generates_on_the_cpu(tiny_models: dict[str, Path]) -> None:
    result = generate(tiny_models["llama-bnb4"], max_tokens=6)
    assert result.backend == "transformers" and result.device == "cpu"
    assert result.prompt_format == "raw"  # the bnb copy carries no chat template


@pytest.fixture(scope="module")
def dropped_llama(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dropped") / "tiny-llama-dropped"
    shutil.copytree(tiny_models["llama"], folder)
    drop_tensors(folder / "model.safetensors", ["model.layers.1.self_attn.q_proj.weight",
                                                "model.layers.0.input_layernorm.weight"])
    return folder


def test_a_checkpoint_missing_tensors_fails_to_load_naming_them(dropped_llama: Path) -> None:
    reporter = RecordingReporter()
    result = run_job(GenerateRequest(dropped_llama, "hello"), reporter)
    assert result.status == "failed" and result.exit_code == 2
    assert "model.layers.0.input_layernorm.weight" in result.error
    assert "model.layers.1.self_attn.q_proj.weight" in result.error
    assert "random values" in result.error and "doctor" in result.error


def test_weights_left_on_meta_by_a_too_small_max_memory_are_a_clear_error(
        tiny_models: dict[str, Path]) -> None:
    # transformers' own sequential placement with far too little memory and no offload folder
    # leaves the weights on the meta device; the loader must stop there, naming the modules.
    info = inspect_path(tiny_models["llama"])
    with pytest.raises(JobError) as caught:
        load_pretrained(info, dtype_name="float32", device_map="sequential",
                        max_memory={"cpu": 10_000}, trust_remote_code=False)
    message = str(caught.value)
    assert "'meta' device" in message
    assert "21 weight(s)" in message  # every weight of the tiny llama
    assert "model.embed_tokens" in message and "model.layers.0.mlp.down_proj" in message
    assert not isinstance(caught.value, FormatError)


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_the_planners_explicit_device_map_is_one_transformers_accepts(
        tiny_models: dict[str, Path], family: str) -> None:
    # The GPU path cannot run here; its device map can. Plan for a roomy GPU, then send every
    # unit to the CPU instead: the module names and their completion must satisfy transformers
    # (Mixtral renames block_sparse_moe to mlp when it loads).
    info = inspect_path(tiny_models[family])
    placement = plan_placement(hf_placement_units(info, 4), [DeviceBudget(0, 10**10)],
                               reserve_bytes=0, reserve_fraction=0.0)
    assert placement.gpu_layers == 2
    device_map = explicit_device_map(info, placement)
    assert "model.rotary_emb" in device_map  # a buffer-only module the checkpoint lacks
    on_cpu = {name: "cpu" for name in device_map}
    model = load_pretrained(info, dtype_name="float32", device_map=on_cpu, max_memory=None,
                            trust_remote_code=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("name", ["llama", "qwen2", "mixtral"])
def test_prefill_computes_the_last_positions_logits_only(
        name: str, tiny_models: dict[str, Path]) -> None:
    """A prompt's logits for every position would be prompt x vocabulary floats (4 GiB for 8k
    tokens of a 128k vocabulary): the output layer sees one position, and it gives the same
    logits as the whole-prompt pass does for the last."""
    from app.core.generate.backends.base import LoadOptions
    from app.core.generate.backends.hf import load_transformers_model

    model = load_transformers_model(inspect_path(tiny_models[name]),
                                    LoadOptions(backend="transformers", use_gpu=False))
    try:
        positions: list[int] = []
        hook = model.model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: positions.append(output.shape[1]))
        ids = list(range(5, 45))
        last = model.prefill(ids)
        hook.remove()
        assert positions == [1]
        assert last == pytest.approx(model.all_logits(ids)[-1], abs=1e-4)
    finally:
        model.close()


def test_loading_for_generation_sets_the_heap_policy_first(
        tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The transformers estimate describes a process whose freed activations go back to the
    system (app/core/heap.py); the policy must be in force before the weights load."""
    import app.core.generate.backends.hf as hf
    from app.core.generate.backends.base import LoadOptions

    order: list[str] = []
    monkeypatch.setattr(hf, "return_freed_buffers", lambda: order.append("policy") or True)
    loading = hf.load_pretrained
    monkeypatch.setattr(hf, "load_pretrained",
                        lambda *args, **kwargs: order.append("load") or loading(*args, **kwargs))
    model = hf.load_transformers_model(inspect_path(tiny_models["llama"]),
                                       LoadOptions(backend="transformers", use_gpu=False))
    model.close()
    assert order == ["policy", "load"]
