"""The Hugging Face Hub: search, a repo's files with remote GGUF headers and fit verdicts,
and resumable, verified downloads (no Qt).

    search_models(SearchQuery("smollm", library="gguf")) → SearchPage
    list_repo("owner/repo") → RepoListing (files, GGUFs by quant, safetensors summary)
    RepoFilesRequest("owner/repo", machine).run(reporter) → RepoFit (verdict per GGUF)
    DownloadRequest("owner/repo", "file.gguf").run(reporter) → DownloadResult
"""
