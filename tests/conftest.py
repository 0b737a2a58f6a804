"""Shared fixtures: tiny offline models and a throwaway Ikomia root.

HOME must point at the throwaway root before anything imports ikomia, so it is set here, when
pytest loads this file. Nothing in the suite reaches a model hub.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from ikomia_home import use_ikomia_home

# Hypothesis keeps its examples and caches out of the plugin folder, which Ikomia HUB zips: in the user's cache,
# found before HOME points at the throwaway root below, so that they outlive the session.
HYPOTHESIS_FOLDER = Path.home() / ".cache" / "infer_kandinsky_2_2" / "hypothesis"
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(HYPOTHESIS_FOLDER))
# Parsing is fast, but the first examples can meet a garbage collection of the model tests' tensors.
hypothesis_settings.register_profile("suite", deadline=None)
hypothesis_settings.load_profile("suite")

# Under pytest-xdist (scripts/test.sh: a worker per core) each worker computes on one thread: the tiny models gain
# nothing from a second, and two teams per core spin at every barrier while the other worker holds the core. Only
# the workers import torch, diffusers and the engine, which takes seconds: xdist's controller runs no test but loads
# this file too, before it starts the workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

SESSION_FOLDER = Path(tempfile.mkdtemp(prefix="infer_kandinsky_2_2_tests_"))
os.environ["HF_HOME"] = str(SESSION_FOLDER / "huggingface")
os.environ["HF_HUB_OFFLINE"] = "1"
use_ikomia_home(SESSION_FOLDER / "home")
sys.path.insert(0, str(SESSION_FOLDER / "home" / "Ikomia" / "Plugins" / "Python"))

if TYPE_CHECKING:
    from infer_kandinsky_2_2.kandinsky22_devkit.tiny import TinyRepos
    from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache

# Small, non-square and fast, on the CPU: the tiny models need few steps to exercise every stage.
TINY_RUN = {
    "cuda": False,
    "prior_num_inference_steps": 3,
    "num_inference_steps": 4,
    "height": 64,
    "width": 128,
    "seed": 1234,
}


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(SESSION_FOLDER, ignore_errors=True)


@pytest.fixture
def cache_folder(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache for the test, offline unless the fake hub is reached."""
    # Imported here: huggingface_hub reads HF_HUB_OFFLINE when it is imported, after this file has set it.
    from huggingface_hub import constants as hub_constants

    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return folder


@pytest.fixture
def fake_gpus(monkeypatch) -> Callable[[int], None]:
    """Make torch see ``count`` CUDA GPUs for the test (``torch.cuda.is_available`` and ``device_count``), as far as
    choosing a runtime goes: nothing can run on them."""

    import torch

    def see(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return see


@pytest.fixture(scope="session")
def tiny_repos() -> TinyRepos:
    from infer_kandinsky_2_2.kandinsky22_devkit.tiny import build_tiny_repos

    return build_tiny_repos(SESSION_FOLDER / "models")


@pytest.fixture(scope="session")
def tiny_depth_model() -> Path:
    """A tiny random-weight transformers depth-estimation model (Depth Anything), for depth_model."""
    from infer_kandinsky_2_2.kandinsky22_devkit.tiny import build_tiny_depth_model

    return build_tiny_depth_model(SESSION_FOLDER / "models" / "tiny-depth-anything")


@pytest.fixture(scope="session")
def warm_cache() -> ModelCache:
    """One model cache for the tests that look only at pixels, metadata or messages, never at what loads or
    where weights are: each model loads once for all of them. Tests that count loads make their own."""
    from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache

    return ModelCache()


@pytest.fixture(scope="session")
def other_decoder(tiny_repos: TinyRepos) -> Path:
    """A second decoder repo (a copy), to check that changing model_name reloads the decoder only."""
    copy = SESSION_FOLDER / "models" / "other-decoder"
    if not copy.exists():
        shutil.copytree(tiny_repos.decoder, copy)
    return copy


@pytest.fixture(scope="session")
def tiny_strings(tiny_repos: TinyRepos) -> dict[str, str]:
    """Parameters, as Ikomia strings, of a quick run on the tiny models (shared: copy it to change it)."""
    return {
        "model_name": str(tiny_repos.decoder),
        "prior_model_name": str(tiny_repos.prior),
        **{name: str(value) for name, value in TINY_RUN.items()},
    }
