"""Where models come from: a local folder, or a Hugging Face hub repo fetched file by file.

A model name is a local folder or a hub id, ``owner/name``, optionally at a revision: ``owner/name@revision``
(a branch, a tag, ``refs/pr/N`` or a commit). A known repo whose default branch cannot serve the task loads
at a pinned revision (``PINNED_REVISIONS``). A repo is a diffusers repo (``model_index.json`` and a folder per
component) or a transformers model, whose files lie at its root (``ROOT``, a component of its own, with
``config.json`` in place of ``model_index.json``). From the hub, the task fetches only the files a run loads:
the configs and safetensors weights of the components asked for, never ``.bin`` pickles, variant files (such
as ``*.fp16.safetensors``) or other folders. A repo already in the local Hugging Face cache loads without
touching the network. Before a download starts, the log says what will be fetched and how large it is, and
it shows the download's progress while it runs.
"""

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from .constants import PINNED_REVISIONS
from .errors import HubUnreachable, ModelLoadError

logger = logging.getLogger(__name__)
# A revision's parts never start with a dot: huggingface_hub writes a branch's commit to refs/<revision> in the cache.
_HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w-][\w.-]*(?:/[\w-][\w.-]*)*))?"
)
# The weights diffusers and transformers load when no variant is asked for: one file, or shards and their index.
_WEIGHTS = re.compile(r"(?:diffusion_pytorch_model|model)(?:-\d{5}-of-\d{5})?\.safetensors(?:\.index\.json)?")
_PICKLES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# The cache keeps a commit's files under its full hash: a shortened one finds nothing there offline.
_SHORT_COMMIT = re.compile(r"[0-9a-f]{7,39}")
# Workaround, matched by class name (huggingface_hub 1.x and 2.x; tests/test_hub.py's unreachable-hub test tells
# when it stops working): the hub could not be reached. huggingface_hub lets its transport's network errors and
# timeouts through, httpx's in 1.x and httpx2's in 2.x, whose classes have the same names but no common base
# to import; LocalEntryNotFoundError is its own, raised when it fell back to a cache that lacks the file.
_CONNECTION_ERRORS = ("NetworkError", "TimeoutException", "LocalEntryNotFoundError")
# Reads a repo's configs (in the folder) before its weights are fetched or loaded, and raises to refuse it.
Check = Callable[[Path, "Source"], None]
# The component that is a repo's root folder: a transformers model's files (config.json, model.safetensors).
ROOT = ""
DIFFUSERS_INDEX = "model_index.json"
TRANSFORMERS_INDEX = "config.json"


def no_check(folder: Path, source: "Source") -> None:
    """Accept any repo: the check of a model that has no kind to verify."""


@dataclass(frozen=True)
class Source:
    """A model name, read: a local folder, or a hub repo at a revision (``None``: the default branch)."""

    name: str
    folder: Path | None = None
    repo_id: str = ""
    revision: str | None = None

    def describe(self) -> str:
        """The model as messages name it: the folder, or the hub id with the revision it loads at."""
        if self.folder is not None:
            return f"folder {self.name!r}"
        pinned = self.revision is not None and "@" not in self.name
        return f"{self.name!r} (revision {self.revision})" if pinned else repr(self.name)


def is_folder_name(model_name: str) -> bool:
    """Whether a model name points at a folder rather than a hub id (``owner/name[@revision]``)."""
    expanded = Path(model_name).expanduser()
    return (
        expanded.is_dir()
        or expanded.is_absolute()
        or model_name.startswith(("./", "../", "~", "."))
        or "\\" in model_name
        or model_name.partition("@")[0].count("/") > 1
    )


def parse_model_name(model_name: str, parameter_name: str) -> Source:
    """Read a model name as a folder or a hub id, and give a known repo its pinned revision.

    Raises ``ModelLoadError`` for a URL, or a name that is neither a folder nor a hub id.
    """
    if "://" in model_name:
        raise ModelLoadError(
            f"{parameter_name}: {model_name!r} is a URL; accepted: a Hugging Face hub id (owner/name, optionally "
            "owner/name@revision) or a local folder."
        )
    if is_folder_name(model_name):
        return Source(model_name, folder=Path(model_name).expanduser())
    match = _HUB_ID.fullmatch(model_name)
    if not match:
        raise ModelLoadError(
            f"{parameter_name}: {model_name!r} is neither an existing folder nor a Hugging Face hub id (owner/name)."
        )
    repo_id, revision = match["repo"], match["revision"]
    if revision and _SHORT_COMMIT.fullmatch(revision):
        raise ModelLoadError(
            f"{parameter_name}: {model_name!r} names revision {revision!r}, which looks like a shortened commit hash; "
            "accepted: a full 40-character commit hash, a branch, a tag or refs/pr/N."
        )
    return Source(model_name, repo_id=repo_id, revision=revision or PINNED_REVISIONS.get(repo_id))


def needed_files(paths: Iterable[str], components: Iterable[str]) -> list[str]:
    """The files of a repo that loading ``components`` reads: ``model_index.json``, and in each component's
    folder (the root for ``ROOT``) its configs and tokenizer files (``*.json``, ``*.txt``) and its safetensors
    weights without variant.

    ``paths`` are the repo's files, relative to its root. Pickles, variants and other folders are left out.
    """
    wanted = set(components)
    chosen = []
    for path in paths:
        folder, _, name = path.rpartition("/")
        if path == DIFFUSERS_INDEX:
            chosen.append(path)
        elif folder in wanted:
            is_config = name.endswith((".json", ".txt")) and ".safetensors" not in name and ".bin" not in name
            if is_config or _WEIGHTS.fullmatch(name):
                chosen.append(path)
    return sorted(chosen)


def _in_component(component: str, name: str) -> str:
    """The path in a repo of the file ``name`` of ``component`` (of the root for ``ROOT``)."""
    return f"{component}/{name}" if component != ROOT else name


def _shown(component: str) -> str:
    """A component as messages name it: its folder, or the root's config for ``ROOT``."""
    return f"{component}/" if component != ROOT else TRANSFORMERS_INDEX


def _index_file(components: Sequence[str]) -> str:
    """The file that tells what a repo is, and whose presence in the cache marks it as there: a transformers
    model's ``config.json`` when its root is what is loaded, a diffusers repo's ``model_index.json`` otherwise."""
    return TRANSFORMERS_INDEX if ROOT in components else DIFFUSERS_INDEX


def is_weights(path: str) -> bool:
    """Whether ``path`` (in a repo) is a weights file that ``needed_files`` may choose."""
    return bool(_WEIGHTS.fullmatch(path.rpartition("/")[2]))


def fetch(
    source: Source,
    parameter_name: str,
    components: Sequence[str],
    check: Check = no_check,
    *,
    weights: bool = True,
) -> Path:
    """A folder holding the repo's index (``model_index.json``, or a transformers model's ``config.json`` when
    ``components`` is ``ROOT``) and, for each of ``components``, its configs and safetensors weights.

    A local folder is used as it is. A hub repo is taken from the local Hugging Face cache when every
    component is there, without the network; otherwise, unless ``HF_HUB_OFFLINE`` is set, its configs are
    fetched, ``check`` reads them (so that a repo of the wrong kind is refused before its weights are
    downloaded), then the missing weights are downloaded, with the plan and the progress in the log. With
    ``weights`` False it stops before the weights: what a run checks of every model before it fetches any.

    Raises ``ModelLoadError`` naming ``parameter_name``, the model and what is wrong; ``check`` raises its own.
    """
    if source.folder is not None:
        if not source.folder.is_dir():
            raise ModelLoadError(
                f"{parameter_name}: folder {source.name!r} not found; accepted: an existing folder or a Hugging Face "
                "hub id (owner/name, or owner/name@revision)."
            )
        check(source.folder, source)
        _refuse_pickles(_paths_in(source.folder, components), components, parameter_name, source)
        return source.folder
    cached = snapshot_folder(source, _index_file(components))
    if cached is not None:
        check(cached, source)
        missing = _missing(cached, components)
        if not missing:
            return cached
        _refuse_pickles(_paths_in(cached, components), components, parameter_name, source)
    else:
        missing = [_shown(component) for component in components]
    if hub_constants.HF_HUB_OFFLINE:
        raise HubUnreachable(
            f"{parameter_name}: {source.describe()} is not (fully) in the local Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it cannot be downloaded (missing: "
            f"{', '.join(missing)}). Download it once with network access, or give a local folder."
        )
    return _download(source, parameter_name, components, check, weights)


def choose_weights_file(
    names: Iterable[str], parameter_name: str, where: str, preferred: str, remedy: str = "the path of one of them"
) -> str:
    """The one safetensors file among ``names`` (the files at the root of a folder or a hub repo, named ``where``
    in messages): ``preferred`` when it is there, else the only ``.safetensors`` file.

    Raises ``ModelLoadError`` naming ``parameter_name`` when there is none (saying so of pickles, which the task
    never loads), or several and none is ``preferred``.
    """
    names = sorted(names)
    candidates = [name for name in names if name.endswith(".safetensors")]
    if preferred in candidates:
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ModelLoadError(
            f"{parameter_name}: {where} holds several .safetensors files ({', '.join(candidates)}) and none named "
            f"{preferred}; accepted: {remedy}."
        )
    pickled = [name for name in names if name.endswith(_PICKLES)]
    if pickled:
        raise ModelLoadError(
            f"{parameter_name}: {where} holds its weights only as pickle files ({', '.join(pickled)}), which the "
            "task never loads (unpickling can run code); accepted: a .safetensors file."
        )
    raise ModelLoadError(f"{parameter_name}: {where} holds no .safetensors file at its root; accepted: one.")


def fetch_weights_file(source: Source, parameter_name: str, preferred: str) -> Path:
    """The path of the one safetensors file at the root of the hub repo ``source`` (``choose_weights_file``), in the
    local Hugging Face cache: taken from there without the network when the revision's snapshot holds one,
    otherwise (unless ``HF_HUB_OFFLINE`` is set) chosen from the repo's file list and downloaded, with its size and
    progress in the log.

    Raises ``ModelLoadError`` naming ``parameter_name``, the repo and what is wrong.
    """
    where = f"hub repo {source.describe()}"
    try:
        # Only the safetensors files: the snapshot holds no other (huggingface_hub 1.x refuses an incomplete
        # snapshot of the whole repo offline).
        cached = Path(
            snapshot_download(
                source.repo_id, revision=source.revision, allow_patterns=["*.safetensors"], local_files_only=True
            )
        )
    except Exception:
        cached = None
    if cached is not None and any(path.suffix == ".safetensors" for path in cached.iterdir()):
        names = [path.name for path in cached.iterdir() if path.is_file()]
        return cached / choose_weights_file(names, parameter_name, where, preferred, "the path of one of them")
    if hub_constants.HF_HUB_OFFLINE:
        raise HubUnreachable(
            f"{parameter_name}: {source.describe()} is not in the local Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it cannot be downloaded. Download it once "
            "with network access, or give a local file."
        )
    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True)
    except Exception as error:
        raise _hub_failure(parameter_name, source, error) from error
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or ()}
    name = choose_weights_file(
        [path for path in sizes if "/" not in path],
        parameter_name,
        where,
        preferred,
        "the path of one of them, downloaded",
    )
    total = _log_plan("downloading", parameter_name, source, info.sha, [name], sizes)
    # By the branch or tag, so that the cache records its commit for later offline runs.
    folder = _snapshot(source, source.revision, [name], parameter_name, progress=_progress_bar(parameter_name, total))
    return folder / name


def snapshot_folder(source: Source, index: str = DIFFUSERS_INDEX) -> Path | None:
    """The folder of ``source``'s revision in the local Hugging Face cache, if its ``index`` file is there
    (``_index_file``)."""
    path = try_to_load_from_cache(source.repo_id, index, revision=source.revision)
    return Path(path).parent if isinstance(path, str) else None


def _missing(folder: Path, components: Sequence[str]) -> list[str]:
    """What a cached snapshot lacks of ``components``: a folder, or a model's safetensors weights."""
    paths = _paths_in(folder, components)
    missing = []
    for component in components:
        inside = _inside(paths, component)
        if not inside:
            missing.append(_shown(component))
        elif _in_component(component, "config.json") in inside and not any(is_weights(path) for path in inside):
            missing.append(f"{component}/ safetensors weights" if component != ROOT else "safetensors weights")
    return missing


def _inside(paths: Iterable[str], component: str) -> list[str]:
    """The paths among ``paths`` (relative to a repo's root) of the files directly in ``component``'s folder."""
    return [path for path in paths if path.rpartition("/")[0] == component]


def _refuse_pickles(paths: Iterable[str], components: Sequence[str], parameter_name: str, source: Source) -> None:
    """Refuse a repo (its files' ``paths``, relative to its root) where a component's weights are pickles only."""
    paths = list(paths)
    pickled = []
    for component in components:
        inside = _inside(paths, component)
        if not any(is_weights(path) for path in inside):
            pickled += sorted(path for path in inside if path.endswith(_PICKLES))
    if pickled:
        raise ModelLoadError(_pickles_message(parameter_name, source, pickled))


def _paths_in(folder: Path, components: Sequence[str]) -> list[str]:
    """The files of ``components``' folders (the root for ``ROOT``) in a local repo, as paths relative to its root."""
    return [
        _in_component(component, path.name)
        for component in components
        if (folder / component).is_dir()
        for path in (folder / component).iterdir()
        if path.is_file()
    ]


def _pickles_message(parameter_name: str, source: Source, pickled: list[str]) -> str:
    pinned = PINNED_REVISIONS.get(source.repo_id)
    if pinned and source.revision != pinned:
        where = f" This repo's safetensors are at revision {pinned}: set {parameter_name} to {source.repo_id!r}."
    elif source.folder is None:
        where = " Use a revision of the repo that has them (owner/name@revision)."
    else:
        where = " Convert them to safetensors where you trust them, or use a repo that has safetensors."
    return (
        f"{parameter_name}: {source.describe()} holds its weights only as pickle files ({', '.join(pickled)}), "
        f"which the task never loads (unpickling can run code); accepted: safetensors weights.{where}"
    )


def _download(source: Source, parameter_name: str, components: Sequence[str], check: Check, weights: bool) -> Path:
    """Fetch ``components`` of a hub repo into the cache: configs first for ``check``, then (if ``weights``) the
    weights. A repo that lacks a component, or holds a component's weights as pickles or variants only, is
    refused before any weight is downloaded.
    """
    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True)
    except Exception as error:
        raise _hub_failure(parameter_name, source, error) from error
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or ()}
    files = needed_files(sizes, components)
    configs = [path for path in files if not is_weights(path)]
    _log_plan("reading the configs:", parameter_name, source, info.sha, configs, sizes)
    # By the branch or tag, so that the cache records its commit (refs/<revision>) for later offline loads; the
    # weights then come by that commit, so that every file comes from one commit.
    folder = _snapshot(source, source.revision, configs, parameter_name, progress=_progress_bar(parameter_name, 0))
    # The configs say what the repo is: a repo of another kind is named as such, not as one missing a part.
    check(folder, source)
    _refuse_incomplete(source, parameter_name, components, files, sizes)
    missing = [path for path in files if is_weights(path) and not (folder / path).exists()]
    if not weights or not missing:
        return folder
    total = _log_plan("downloading", parameter_name, source, folder.name, missing, sizes)
    started = time.perf_counter()
    _snapshot(source, folder.name, files, parameter_name, progress=_progress_bar(parameter_name, total))
    logger.info(
        "infer_kandinsky_2_2: %s: downloaded %s in %.0f s", parameter_name, _size(total), time.perf_counter() - started
    )
    return folder


def _log_plan(
    doing: str, parameter_name: str, source: Source, commit: str, paths: list[str], sizes: dict[str, int | None]
) -> int:
    """Say in the log which files of the repo are about to be fetched, and how large they are; return the bytes."""
    total = sum(sizes[path] or 0 for path in paths)
    logger.info(
        "infer_kandinsky_2_2: %s: %s %d file(s), %s, of %s at commit %s into %s: %s",
        parameter_name,
        doing,
        len(paths),
        _size(total),
        source.repo_id,
        commit,
        hub_constants.HF_HUB_CACHE,
        ", ".join(f"{path} ({_size(sizes[path])})" for path in paths),
    )
    return total


def _refuse_incomplete(
    source: Source, parameter_name: str, components: Sequence[str], files: list[str], sizes: dict[str, int | None]
) -> None:
    """Refuse a repo (``sizes``: its files, ``files``: those the task would fetch) that lacks a component the
    task loads, or whose weights for one are pickles or variant files only."""
    absent = [_shown(name) for name in components if not _inside(files, name)]
    if absent:
        raise ModelLoadError(
            f"{parameter_name}: {source.describe()} has no {', '.join(absent)}, which the task loads; accepted: a "
            "Kandinsky 2.2 repo in the diffusers layout."
        )
    _refuse_pickles(sizes, components, parameter_name, source)
    for component in components:
        inside = _inside(sizes, component)
        if _in_component(component, "config.json") in sizes and not any(is_weights(path) for path in inside):
            variants = sorted(path for path in inside if path.endswith(".safetensors"))
            only = f" (only {', '.join(variants)}: variant files, which the task does not load)" if variants else ""
            where = f"in {component}/" if component != ROOT else "at its root"
            raise ModelLoadError(
                f"{parameter_name}: {source.describe()} has no safetensors weights {where}{only}; accepted: "
                "a repo with weights named diffusion_pytorch_model.safetensors or model.safetensors (or shards)."
            )


def _snapshot(
    source: Source, revision: str | None, files: list[str], parameter_name: str, progress: type[tqdm] | None = None
) -> Path:
    try:
        return Path(snapshot_download(source.repo_id, revision=revision, allow_patterns=files, tqdm_class=progress))
    except Exception as error:
        raise _hub_failure(parameter_name, source, error) from error


def _progress_bar(parameter_name: str, total: int) -> type[tqdm]:
    """A tqdm class for ``snapshot_download`` that writes the download's progress to the log, not to a terminal.

    huggingface_hub counts the bytes received in one or two byte bars (unit "B"); the most any of them has
    counted is logged each time it passes another tenth of ``total``, and at the end.
    """
    state = {"logged": 0, "started": time.perf_counter()}
    lock = threading.Lock()

    class LoggedProgress(tqdm):
        def __init__(self, *arguments: object, **options: object) -> None:
            options.update(disable=False, file=_Discard())
            super().__init__(*arguments, **options)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.unit != "B" or total <= 0:
                return shown
            with lock:
                tenths = min(10, int(self.n * 10 // total))
                if tenths > state["logged"]:
                    state["logged"] = tenths
                    seconds = max(time.perf_counter() - state["started"], 1e-9)
                    logger.info(
                        "infer_kandinsky_2_2: %s: downloaded %s of %s (%d%%), %s/s",
                        parameter_name,
                        _size(min(self.n, total)),
                        _size(total),
                        tenths * 10,
                        _size(self.n / seconds),
                    )
            return shown

    return LoggedProgress


class _Discard:
    """A file that forgets what is written to it: tqdm's terminal output, which the log replaces."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _size(size: float | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("bytes", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def _hub_failure(parameter_name: str, source: Source, error: Exception) -> ModelLoadError:
    """The error to raise when the hub failed to give ``source``: ``HubUnreachable`` when it could not be reached,
    else a ``ModelLoadError`` saying what the hub answered."""
    chain = _exception_chain(error)
    name = source.describe()
    if any(isinstance(item, GatedRepoError) for item in chain):
        return ModelLoadError(
            f"{parameter_name}: {name} is gated on the Hugging Face hub: accept its conditions on its page, then log "
            "in (hf auth login) or set HF_TOKEN."
        )
    if any(isinstance(item, RepositoryNotFoundError) for item in chain):
        return ModelLoadError(f"{parameter_name}: {name} was not found on the Hugging Face hub (or is private).")
    if any(isinstance(item, RevisionNotFoundError) for item in chain):
        return ModelLoadError(f"{parameter_name}: {name} has no revision {source.revision!r} on the Hugging Face hub.")
    if any(isinstance(item, RemoteEntryNotFoundError) for item in chain):
        return ModelLoadError(
            f"{parameter_name}: {name} has no model_index.json on the Hugging Face hub; accepted: a Kandinsky 2.2 "
            "repo in the diffusers layout."
        )
    if any(kind.__name__ in _CONNECTION_ERRORS for item in chain for kind in type(item).__mro__):
        return HubUnreachable(
            f"{parameter_name}: {name} is not in the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}) "
            "and could not be fetched: the hub is unreachable from this machine."
        )
    return ModelLoadError(
        f"{parameter_name}: {name} could not be fetched from the Hugging Face hub: {first_line(error)}"
    )


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
