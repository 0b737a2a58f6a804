"""Self-tests of the fake hub against the real huggingface_hub client (no network)."""

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants, hf_api, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from tqdm.auto import tqdm

from fake_hub import FakeHub, FakeRepo, hub_at

REPO_ID = "owner/decoder"
MAIN = "a" * 40
PR = "b" * 40
OLD = "c" * 40

# A diffusers-like layout, with a .bin copy beside the unet's .safetensors file as some hub repos have.
MAIN_FILES = {
    "model_index.json": b'{"_class_name": "KandinskyV22Pipeline"}',
    "README.md": b"# decoder\n",
    "unet/config.json": b'{"in_channels": 4}',
    "unet/diffusion_pytorch_model.safetensors": bytes(range(256)) * 40,
    "unet/diffusion_pytorch_model.bin": b"pickle" * 1000,
    "movq/config.json": b'{"latent_channels": 4}',
    "movq/diffusion_pytorch_model.safetensors": bytes(range(255, -1, -1)) * 30,
}
PR_FILES = {**MAIN_FILES, "unet/config.json": b'{"in_channels": 8}'}
OLD_FILES = {"model_index.json": b'{"_class_name": "Old"}', "unet/config.json": b'{"in_channels": 2}'}
WANTED = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    repo = FakeRepo(commits={MAIN: MAIN_FILES, PR: PR_FILES, OLD: OLD_FILES}, refs={"main": MAIN, "refs/pr/5": PR})
    with FakeHub({REPO_ID: repo}) as running, hub_at(running.endpoint):
        yield running


def snapshot_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_snapshot_download_fetches_exactly_the_allowed_files(hub: FakeHub, tmp_path: Path) -> None:
    folder = Path(snapshot_download(REPO_ID, revision="main", allow_patterns=WANTED, cache_dir=tmp_path))

    assert folder == tmp_path / "models--owner--decoder" / "snapshots" / MAIN
    assert snapshot_files(folder) == {path: MAIN_FILES[path] for path in WANTED}
    assert sorted(hub.downloaded()) == sorted(f"{REPO_ID}:{path}" for path in WANTED)
    resolved = {path.rsplit("/resolve/", 1)[1] for _, path in hub.requests if "/resolve/" in path}
    assert resolved == {f"{MAIN}/{path}" for path in WANTED}
    # Blobs are named as the hub's: sha256 for LFS files, git blob sha1 for the others.
    blobs = {path.name for path in (folder.parent.parent / "blobs").iterdir()}
    assert blobs == {
        hashlib.sha256(MAIN_FILES[WANTED[2]]).hexdigest(),
        *(hashlib.sha1(b"blob %d\0" % len(MAIN_FILES[path]) + MAIN_FILES[path]).hexdigest() for path in WANTED[:2]),
    }


@pytest.mark.parametrize(("revision", "sha", "files"), [(OLD, OLD, OLD_FILES), ("refs/pr/5", PR, PR_FILES)])
def test_a_revision_serves_its_commit(
    hub: FakeHub, tmp_path: Path, revision: str, sha: str, files: dict[str, bytes]
) -> None:
    folder = Path(snapshot_download(REPO_ID, revision=revision, allow_patterns=WANTED[:2], cache_dir=tmp_path))

    assert folder.name == sha
    assert snapshot_files(folder) == {path: files[path] for path in WANTED[:2]}
    snapshot_download(REPO_ID, revision="main", allow_patterns=WANTED[:1], cache_dir=tmp_path)
    refs = tmp_path / "models--owner--decoder" / "refs"
    assert (refs / "main").read_text() == MAIN
    if revision.startswith("refs/"):
        assert (refs / revision).read_text() == sha


def test_model_info_gives_the_commit_and_sizes(hub: FakeHub) -> None:
    info = HfApi().model_info(REPO_ID, revision="refs/pr/5", files_metadata=True)

    assert info.sha == PR
    assert {sibling.rfilename: sibling.size for sibling in info.siblings or []} == {
        path: len(content) for path, content in PR_FILES.items()
    }
    lfs = {sibling.rfilename for sibling in info.siblings or [] if sibling.lfs is not None}
    assert lfs == {path for path in PR_FILES if path.endswith((".safetensors", ".bin"))}


def test_list_repo_tree_lists_files_and_folders(hub: FakeHub) -> None:
    api = HfApi()

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO_ID, revision=MAIN)}
    under_unet = [entry.path for entry in api.list_repo_tree(REPO_ID, "unet", recursive=True, revision=MAIN)]

    assert top == {"model_index.json": "RepoFile", "README.md": "RepoFile", "unet": "RepoFolder", "movq": "RepoFolder"}
    assert sorted(under_unet) == sorted(path for path in MAIN_FILES if path.startswith("unet/"))


def test_tqdm_class_sees_every_downloaded_byte(hub: FakeHub, tmp_path: Path) -> None:
    bars: list[dict[str, Any]] = []

    class RecordingTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.record: dict[str, Any] = {"unit": kwargs.get("unit"), "updates": []}
            bars.append(self.record)

        def update(self, n: float | None = 1) -> bool | None:
            self.record["updates"].append(n)
            return super().update(n)

    snapshot_download(REPO_ID, revision="main", allow_patterns=WANTED, cache_dir=tmp_path, tqdm_class=RecordingTqdm)

    total = sum(len(MAIN_FILES[path]) for path in WANTED)
    byte_bars = [sum(bar["updates"]) for bar in bars if bar["unit"] == "B"]
    file_bars = [sum(bar["updates"]) for bar in bars if bar["unit"] != "B"]
    # One bar counts bytes received, one bytes written, one the files done.
    assert byte_bars == [total, total]
    assert file_bars == [len(WANTED)]


@pytest.mark.parametrize(
    "call",
    [
        lambda repo_id, revision, tmp_path: HfApi().model_info(repo_id, revision=revision, files_metadata=True),
        lambda repo_id, revision, tmp_path: snapshot_download(repo_id, revision=revision, cache_dir=tmp_path),
        lambda repo_id, revision, tmp_path: hf_hub_download(
            repo_id, "model_index.json", revision=revision, cache_dir=tmp_path
        ),
    ],
    ids=["model_info", "snapshot_download", "hf_hub_download"],
)
def test_unknown_repo_and_revision_raise_the_client_errors(hub: FakeHub, tmp_path: Path, call: Any) -> None:
    with pytest.raises(RepositoryNotFoundError):
        call("owner/missing", "main", tmp_path)
    with pytest.raises(RevisionNotFoundError):
        call(REPO_ID, "no-such-branch", tmp_path)
    assert hub.downloaded() == []


def test_hub_at_restores_the_client_settings_and_the_hub_leaves_no_thread() -> None:
    names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    before = {name: getattr(constants, name) for name in names}
    threads_before = set(threading.enumerate())
    endpoint_before = hf_api.api.endpoint

    with FakeHub({REPO_ID: FakeRepo.of(OLD_FILES)}) as hub, hub_at(hub.endpoint):
        assert huggingface_hub.model_info(REPO_ID).sha == FakeRepo.of(OLD_FILES).refs["main"]
        assert hub.endpoint == constants.ENDPOINT

    assert {name: getattr(constants, name) for name in names} == before
    assert hf_api.api.endpoint == endpoint_before
    assert set(threading.enumerate()) <= threads_before
    assert hub.requests == [("GET", f"/api/models/{REPO_ID}")]
