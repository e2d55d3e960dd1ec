"""Hub ids load with the adapter of their own family, offline from a Hugging Face cache (the snapshot
layout models--ORG--NAME/snapshots/REV with refs/main) populated with tiny pipelines; an id that is
not cached stops with one sentence naming it and the download command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cache_pipeline(cache: Path, repo: str, save) -> None:
    org, name = repo.split("/")
    base = cache / f"models--{org}--{name}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    save(base / "snapshots" / rev)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)


def test_hub_ids_resolve_their_family_from_the_cached_pipeline_config(tmp_path):
    from flowalign.testing import save_tiny_flux, save_tiny_wan

    cache = tmp_path / "hub"
    cache_pipeline(cache, "tiny-org/tiny-flux", save_tiny_flux)
    cache_pipeline(cache, "tiny-org/tiny-wan", save_tiny_wan)
    code = ("from flowalign.policies import load_policy, pipeline_class\n"
            "for repo in ('tiny-org/tiny-flux', 'tiny-org/tiny-wan'):\n"
            "    print(repo, pipeline_class(repo), type(load_policy(repo)).__name__)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tiny-org/tiny-flux FluxPipeline FluxPolicy" in out.stdout
    assert "tiny-org/tiny-wan WanPipeline WanPolicy" in out.stdout  # a video family, no longer loaded as SD3


def test_an_uncached_hub_id_names_the_download_command(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from flowalign.policies import load_policy

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"'nobody/nothing' is not in the Hugging Face cache.*hf download"):
        load_policy("nobody/nothing")
