"""Hub search, repo files, remote GGUF headers and fit verdicts, against a local test Hub
that the real huggingface_hub client talks to."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import GOOD_TOKEN, HubServer, fresh_test_hub, serving_standard_repos

from app.core.errors import OptionError
from app.core.estimate.verdict import Machine
from app.core.formats.gguf_header import read_gguf_header
from app.core.formats.scan import inspect_path
from app.core.hub.errors import HubAccessError, HubNotFoundError, HubUnavailableError
from app.core.hub.fit import RepoFilesRequest
from app.core.hub.remote_header import describe_remote_gguf, read_remote_gguf_header
from app.core.hub.repo_files import list_repo, quant_from_name
from app.core.hub.search import SearchQuery, search_models
from app.core.jobs import RecordingReporter

GIB = 1 << 30


@pytest.fixture(scope="module")
def hub_files(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with serving_standard_repos(tmp_path_factory.mktemp("hub-repos"), smollm2_gguf) as server:
        yield server


@pytest.fixture()
def hub(hub_files: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    return fresh_test_hub(monkeypatch, tmp_path, hub_files)


def test_search_pages_through_the_hubs_link_headers(hub: HubServer) -> None:
    query = SearchQuery("", sort="downloads", limit=3)
    first = search_models(query)
    second = search_models(query, page=1)
    ids = [m.repo_id for m in first.models + second.models]
    assert ids[:4] == ["acme/SmolLM2-135M-Instruct-GGUF", "acme/tiny-llama",
                       "acme/tiny-quants-GGUF", "acme/gated-GGUF"]
    assert len(ids) == len(set(ids)) == 6 and first.has_more and second.has_more
    third = search_models(query, page=2)
    assert [m.repo_id for m in third.models] == ["other/filler-0"] and not third.has_more
    # The server pages by 2: the client followed its Link header to a cursor.
    assert any("cursor=" in path for _, path, _ in hub.requests)
    smol = first.models[0]
    assert smol.downloads == 900 and smol.likes == 30 and smol.has_gguf
    assert smol.last_modified is not None and not smol.gated
    assert second.models[0].gated and first.models[1].has_safetensors


def test_search_filters_and_sorts(hub: HubServer) -> None:
    by_likes = search_models(SearchQuery("", library="gguf", sort="likes", limit=10))
    assert [m.repo_id for m in by_likes.models] == [
        "acme/tiny-quants-GGUF", "acme/SmolLM2-135M-Instruct-GGUF", "acme/gated-GGUF"]
    recent = search_models(SearchQuery("filler", author="other", sort="recent", limit=10))
    assert [m.repo_id for m in recent.models] == ["other/filler-0", "other/filler-1",
                                                  "other/filler-2"]
    assert not any(m.has_gguf for m in recent.models)
    with pytest.raises(OptionError):
        search_models(SearchQuery("x", library="pytorch"))


@pytest.mark.parametrize(("name", "quant"), [
    ("Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("model.IQ3_XS.gguf", "IQ3_XS"),
    ("x-bf16.gguf", "BF16"), ("Q8_0/big-Q8_0-00001-of-00004.gguf", "Q8_0"),
    ("m-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"), ("m-Q4_0_4_4.gguf", "Q4_0_4_4"),
    ("model.fp16.gguf", "F16"), ("plain.gguf", None)])
def test_quant_is_read_from_file_names(name: str, quant: str | None) -> None:
    assert quant_from_name(name) == quant


def test_repo_files_group_quants_and_shards(hub: HubServer) -> None:
    listing = list_repo("acme/tiny-quants-GGUF")
    by_label = {g.label: g for g in listing.ggufs}
    assert {g.quant for g in listing.ggufs} == {"Q4_K_M", "IQ3_XS", "BF16", "Q8_0"}
    split = by_label["Q8_0/tiny-Q8_0-*-of-00003.gguf"]
    assert split.shard_count == 3 and split.complete
    assert split.files == tuple(f"Q8_0/tiny-Q8_0-{i:05d}-of-00003.gguf" for i in (1, 2, 3))
    assert split.size == sum(listing.file(n).size for n in split.files)  # type: ignore[union-attr]
    assert listing.file("README.md").size == len(b"# tiny quants\n")  # type: ignore[union-attr]
    assert listing.base_models == ("acme/tiny-llama",) and listing.quantized
    assert listing.safetensors is None


def test_safetensors_total_size_and_parameters_from_their_headers(hub: HubServer) -> None:
    from safetensors import safe_open

    listing = list_repo("acme/tiny-llama")
    summary = listing.safetensors
    assert summary is not None and len(summary.files) > 1  # sharded
    folder = Path(hub.repos["acme/tiny-llama"].files[summary.files[0]]).parent  # type: ignore[arg-type]
    expected = 0
    for name in summary.files:
        with safe_open(folder / name, "np") as handle:
            expected += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    assert summary.parameters == expected and summary.dtypes == {"F32": expected}
    assert summary.total_size == sum((folder / n).stat().st_size for n in summary.files)
    assert not listing.ggufs and not listing.quantized


def test_safetensors_repo_fit_in_transformers_and_as_each_gguf(hub: HubServer) -> None:
    from app.core.formats.scan import describe_path

    fit = RepoFilesRequest("acme/tiny-llama", Machine("test", 16 * GIB, ()), context=256).run(
        RecordingReporter())
    report = fit.safetensors_report
    assert report is not None and fit.safetensors_note is None
    assert report.verdict.kind == "ram" and report.model.architecture == "llama"
    local = describe_path(Path(hub.repos["acme/tiny-llama"].files["config.json"]).parent)  # type: ignore[arg-type]
    assert report.model.parameters == local.parameters and report.model.n_layers == 2
    quants = {c.candidate.quant for c in report.candidates}
    assert {"F16", "Q8_0", "Q4_0"} <= quants and report.recommended is not None
    assert fit.to_json()["safetensors_fit"]["verdict"] == "ram"


def test_remote_header_equals_local_inspect(hub: HubServer, smollm2_gguf: Path) -> None:
    repo = "acme/SmolLM2-135M-Instruct-GGUF"
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    header = read_remote_gguf_header(repo, name)
    local = read_gguf_header(smollm2_gguf)
    assert header.tensors == local.tensors and header.fields == local.fields
    assert header.data_offset == local.data_offset and header.file_size == local.file_size
    ranges = [r for method, path, r in hub.requests if method == "GET" and r]
    # It grew from the first megabyte until the header was complete, never the whole file.
    assert ranges[0] == "bytes=0-1048575" and len(ranges) > 1
    last_end = int(ranges[-1].rsplit("-", 1)[1])
    assert local.data_offset <= last_end + 1 < local.file_size // 10

    listing = list_repo(repo)
    remote = describe_remote_gguf(repo, listing.ggufs[0], listing.revision,
                                  {f.name: f.size for f in listing.files})  # type: ignore[misc]
    on_disk = inspect_path(smollm2_gguf)
    assert remote.to_json(with_tensors=True) | {"path": "", "files": [], "source": "",
                                                "repo_id": None} == \
        on_disk.to_json(with_tensors=True) | {"path": "", "files": [], "source": "",
                                              "repo_id": None}
    assert remote.source == "hub" and remote.repo_id == repo


def test_fit_verdict_per_file_and_recommended(hub: HubServer) -> None:
    machine = Machine("test", 16 * GIB, ())
    fit = RepoFilesRequest("acme/tiny-quants-GGUF", machine, context=256).run(
        RecordingReporter())
    assert len(fit.files) == 4
    assert all(f.architecture == "llama" and f.verdict.kind == "ram" for f in fit.files)
    assert sum(f.recommended for f in fit.files) == 1
    assert "avoids stacking two quantization errors" in (fit.original_note or "")
    small = RepoFilesRequest("acme/SmolLM2-135M-Instruct-GGUF", Machine("tiny", 64 << 20, ()),
                             context=8192).run(RecordingReporter())
    assert small.files[0].verdict.kind == "none"


def test_gated_private_and_missing_repos_say_what_to_do(hub: HubServer) -> None:
    machine = Machine("test", 16 * GIB, ())
    gated = RepoFilesRequest("acme/gated-GGUF", machine).run(RecordingReporter())
    assert gated.listing.gated and gated.files[0].verdict.kind == "unknown"
    assert "licence" in gated.files[0].verdict.text
    with pytest.raises(HubAccessError, match="accept the licence") as info:
        read_remote_gguf_header("acme/gated-GGUF", "tiny-Q4_K_M.gguf")
    assert info.value.exit_code == 2 and info.value.reason_code == "gated"
    with pytest.raises(HubAccessError, match="401") as info:
        list_repo("acme/private-model")
    assert info.value.reason_code == "private"
    with pytest.raises(HubNotFoundError, match="404"):
        list_repo("acme/no-such-model")
    hub.fail["acme/tiny-quants-GGUF"] = 403
    with pytest.raises(HubAccessError, match="licence"):
        read_remote_gguf_header("acme/tiny-quants-GGUF", "tiny-Q4_K_M.gguf")


def test_token_from_hf_token_opens_private_repo_and_is_never_shown(
        hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert list_repo("acme/private-model").ggufs[0].quant == "Q4_K_M"
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_123")
    with pytest.raises(HubAccessError) as info:
        list_repo("acme/private-model")
    assert info.value.reason_code == "token" and "hf_wrong_token_123" not in str(info.value)


def test_offline_mode_and_unreachable_hub(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="offline") as info:
        search_models(SearchQuery("smol"))
    assert info.value.offline_mode
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HubUnavailableError, match="cannot reach"):
        list_repo("acme/tiny-quants-GGUF")


def test_a_header_prefix_asks_for_more_bytes_but_a_hostile_count_is_still_refused(
        smollm2_gguf: Path) -> None:
    import struct

    from app.core.errors import FormatError
    from app.core.formats.gguf_header import NeedMoreBytes, parse_gguf_header

    data = smollm2_gguf.read_bytes()[:1 << 16]
    size = smollm2_gguf.stat().st_size
    with pytest.raises(NeedMoreBytes) as more:
        parse_gguf_header(memoryview(data), smollm2_gguf, size)
    assert len(data) < more.value.needed < size
    # The same prefix as a whole file is truncated, as before.
    with pytest.raises(FormatError, match="truncated"):
        parse_gguf_header(memoryview(data), smollm2_gguf, len(data))
    # A metadata count that no file of this size can hold is corrupt, not "need more".
    hostile = data[:16] + struct.pack("<Q", 1 << 40) + data[24:]
    with pytest.raises(FormatError, match="metadata entries"):
        parse_gguf_header(memoryview(hostile), smollm2_gguf, size)


def test_a_remote_header_that_claims_too_much_is_refused_after_the_first_megabyte(
        hub: HubServer, tmp_path: Path) -> None:
    import struct

    from hub_server import HubRepo

    from app.core.errors import FormatError

    hostile = tmp_path / "hostile.gguf"
    with open(hostile, "wb") as handle:  # 1 GiB, sparse: a count of 50M entries would fit
        handle.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 50_000_000))
        handle.truncate(1 << 30)
    hub.add(HubRepo("acme/hostile-GGUF", {"hostile.gguf": hostile}))
    hub._sha_cache[("acme/hostile-GGUF", "hostile.gguf")] = "0" * 64  # never downloaded
    with pytest.raises(FormatError, match="no real GGUF header is that large"):
        read_remote_gguf_header("acme/hostile-GGUF", "hostile.gguf")
    fetched = [r for _, path, r in hub.requests if path.startswith("/cdn/")]
    assert fetched == ["bytes=0-1048575"]


@pytest.mark.parametrize(("text", "expected"), [
    ("bartowski/Llama-3-8B-GGUF", ("bartowski/Llama-3-8B-GGUF", None, None)),
    ("https://huggingface.co/acme/x-GGUF", ("acme/x-GGUF", None, None)),
    ("https://huggingface.co/acme/x-GGUF/blob/main/sub/x-Q4_K_M.gguf",
     ("acme/x-GGUF", "sub/x-Q4_K_M.gguf", "main")),
    ("hf.co/acme/x-GGUF/resolve/v1.0/x.gguf", ("acme/x-GGUF", "x.gguf", "v1.0")),
    ("https://huggingface.co/acme/x-GGUF/tree/dev", ("acme/x-GGUF", None, "dev")),
    ("https://huggingface.co/datasets/acme/data", None),
    ("https://example.com/acme/x", None),
    ("just words", None),
    ("../etc/passwd", None),
])
def test_hub_references_from_pasted_text(text: str, expected: tuple | None) -> None:
    from app.core.hub.references import parse_hub_reference

    found = parse_hub_reference(text)
    assert (None if found is None else (found.repo_id, found.filename, found.revision)) == \
        expected
