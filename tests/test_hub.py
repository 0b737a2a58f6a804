"""Models by hub id: every mode from an offline Hugging Face cache with the default names, and downloads from a
fake hub that fetch only what a run loads, with the plan and the progress in the log."""

import functools
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants

from fake_hub import FakeHub, FakeRepo, hub_at
from helpers import files_of, left_half_mask, load_for, random_image
from infer_kandinsky_2_2.kandinsky22_engine import hub
from infer_kandinsky_2_2.kandinsky22_engine.constants import (
    DEFAULT_CONTROLNET_DECODER,
    DEFAULT_DECODER,
    DEFAULT_INPAINT_DECODER,
    DEFAULT_PRIOR,
    PINNED_REVISIONS,
)
from infer_kandinsky_2_2.kandinsky22_engine.errors import HubUnreachable, ModelLoadError
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.modes import (
    MODES,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

PINNED = PINNED_REVISIONS[DEFAULT_CONTROLNET_DECODER]
RUN = {"prior_num_inference_steps": 2, "num_inference_steps": 4, "height": 64, "width": 128, "seed": 7, "cuda": False}
INPUTS = {
    "text2img": Inputs(),
    "img2img": Inputs(image=random_image(1)),  # strength 0.3: 1 of 4 steps
    "inpaint": Inputs(image=random_image(2), mask=left_half_mask()),
    "outpaint": Inputs(image=random_image(3, (64, 64, 3))),
    "controlnet_depth": Inputs(depth=random_image(4, (64, 128))),
    "controlnet_img2img": Inputs(image=random_image(1), depth=random_image(4, (64, 128))),
    "mix": Inputs(mix_images=(random_image(5), random_image(6))),
}
# What a mode needs beyond RUN: outpaint's default margins (128 each side) do not fit a 128-wide picture.
MODE_RUN = {"outpaint": {"outpaint_left": 32, "outpaint_right": 32, "outpaint_overlap": 8}}


def mode_settings(mode: str, **names: object) -> Settings:
    """The settings of a quick run of ``mode``."""
    return Settings(mode=mode, **RUN, **MODE_RUN.get(mode, {}), **names)


def commit_of(files: dict[str, bytes]) -> str:
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path])
    return digest.hexdigest()


def pickled(files: dict[str, bytes]) -> dict[str, bytes]:
    """The repo with its safetensors weights replaced by .bin pickles, as the ControlNet repo's main branch is."""
    from safetensors.torch import load

    result = {}
    for path, content in files.items():
        if path.endswith(".safetensors"):
            buffer = io.BytesIO()
            torch.save(load(content), buffer)
            result[path.replace(".safetensors", ".bin")] = buffer.getvalue()
        else:
            result[path] = content
    return result


def put_in_cache(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...]) -> None:
    """Lay ``files`` out as huggingface_hub does: blobs by hash, the commit's snapshot linking to them, refs."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for path, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = root / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (path.count("/") + 2)) / "blobs" / blob.name)
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit, encoding="utf-8")


@pytest.fixture(scope="module")
def published(tiny_repos) -> dict[str, dict[str, bytes]]:
    """The tiny repos' files under the published repos' hub ids."""
    return {
        DEFAULT_PRIOR: files_of(tiny_repos.prior),
        DEFAULT_DECODER: files_of(tiny_repos.decoder),
        DEFAULT_INPAINT_DECODER: files_of(tiny_repos.inpaint_decoder),
        DEFAULT_CONTROLNET_DECODER: files_of(tiny_repos.controlnet_decoder),
    }


@pytest.fixture(scope="module")
def by_folder(tiny_repos, warm_cache) -> Callable[[str], np.ndarray]:
    """The picture of a mode's run from the tiny repos' folders, which a run by hub id must equal (each once)."""

    @functools.cache
    def picture(mode: str) -> np.ndarray:
        # The tiny repos are named by the decoder's cache role.
        model = getattr(tiny_repos, MODES[mode].decoder.role)
        settings = mode_settings(mode, model_name=str(model), prior_model_name=str(tiny_repos.prior))
        return generate(settings, INPUTS[mode], cache=warm_cache).images[0]

    return picture


def refusal(settings: Settings, inputs: Inputs = INPUTS["text2img"], cache: ModelCache | None = None) -> str:
    """The message of the ``ModelLoadError`` that a run of ``settings`` raises."""
    with pytest.raises(ModelLoadError) as refused:
        generate(settings, inputs, cache=cache or ModelCache())
    return str(refused.value)


def test_every_mode_runs_offline_from_the_cache_with_its_default_models(cache_folder, published, by_folder):
    for repo_id, files in published.items():
        if repo_id == DEFAULT_CONTROLNET_DECODER:
            # main holds pickles only; the safetensors are at the pinned commit, which only a pull request names.
            main = pickled(files)
            put_in_cache(cache_folder, repo_id, commit_of(main), main, refs=("main",))
            put_in_cache(cache_folder, repo_id, PINNED, files, refs=("refs/pr/5",))
        else:
            put_in_cache(cache_folder, repo_id, commit_of(files), files, refs=("main",))
    # One cache for the modes in turn, as the task's: each model loads once, the prior for the first mode.
    cache = ModelCache()
    assert set(INPUTS) == set(MODES)
    for mode, inputs in INPUTS.items():
        result = generate(mode_settings(mode), inputs, cache=cache)
        assert np.array_equal(result.images[0], by_folder(mode)), mode
    assert cache.load_counts == {
        "prior": 1,
        "decoder": 1,
        "inpaint_decoder": 1,
        "controlnet_decoder": 1,
        "image_encoder": 1,
    }


def test_the_controlnet_repos_main_branch_with_pickles_only_is_refused_and_names_the_pinned_revision(
    cache_folder, published
):
    files = pickled(published[DEFAULT_CONTROLNET_DECODER])
    put_in_cache(cache_folder, DEFAULT_CONTROLNET_DECODER, commit_of(files), files, refs=("main",))
    name = f"{DEFAULT_CONTROLNET_DECODER}@main"
    settings = Settings(mode="controlnet_depth", model_name=name, **RUN)
    assert refusal(settings, INPUTS["controlnet_depth"]) == (
        f"model_name: {name!r} holds its weights only as pickle files (unet/diffusion_pytorch_model.bin, "
        "movq/diffusion_pytorch_model.bin), which the task never loads (unpickling can run code); accepted: "
        f"safetensors weights. This repo's safetensors are at revision {PINNED}: set model_name to "
        f"{DEFAULT_CONTROLNET_DECODER!r}."
    )


def test_text2img_with_a_negative_prompt_runs_from_a_cache_without_the_image_encoder(cache_folder, published):
    for repo_id in (DEFAULT_PRIOR, DEFAULT_DECODER):
        files = {path: content for path, content in published[repo_id].items() if "image_encoder" not in path}
        put_in_cache(cache_folder, repo_id, commit_of(files), files, refs=("main",))
    cache = ModelCache()
    generate(Settings(**RUN), cache=cache)
    assert set(cache.loaded_keys()) == {"prior", "decoder"}
    assert refusal(Settings(negative_prompt="", **RUN), cache=cache) == (
        f"prior_model_name: {DEFAULT_PRIOR!r} is not (fully) in the local Hugging Face cache ({cache_folder}) and "
        "HF_HUB_OFFLINE is set, so it cannot be downloaded (missing: image_encoder/). Download it once with network "
        "access, or give a local folder."
    )


# What a published repo holds beyond what the task loads: pickle copies, a float16 variant, a model card.
EXTRAS = {
    "README.md": b"# model card\n",
    "unet/diffusion_pytorch_model.bin": b"pickle of the unet",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"float16 variant of the unet",
    "prior/diffusion_pytorch_model.bin": b"pickle of the prior",
    "text_encoder/pytorch_model.bin": b"pickle of the text encoder",
    "image_encoder/pytorch_model.bin": b"pickle of the image encoder",
}


@pytest.fixture
def online(cache_folder, published):
    """A fake hub serving the published repos, with their extra files, and huggingface_hub pointed at it."""

    def with_extras(files: dict[str, bytes]) -> dict[str, bytes]:
        folders = {path.split("/")[0] for path in files if "/" in path}
        return {**files, **{path: data for path, data in EXTRAS.items() if path.partition("/")[0] in folders | {path}}}

    repos = {repo_id: FakeRepo.of(with_extras(files)) for repo_id, files in published.items()}
    controlnet = with_extras(published[DEFAULT_CONTROLNET_DECODER])
    main = {**pickled(published[DEFAULT_CONTROLNET_DECODER]), "README.md": EXTRAS["README.md"]}
    repos[DEFAULT_CONTROLNET_DECODER] = FakeRepo(
        commits={commit_of(main): main, PINNED: controlnet}, refs={"main": commit_of(main), "refs/pr/5": PINNED}
    )
    with FakeHub(repos) as fake, hub_at(fake.endpoint):
        yield fake


def loaded_files(repo_id: str, files: dict[str, bytes], *folders: str) -> list[str]:
    """What loading ``folders`` of a repo reads: model_index.json, and their configs and safetensors weights."""
    chosen = [path for path in files if path == "model_index.json" or path.split("/")[0] in folders]
    return sorted(f"{repo_id}:{path}" for path in chosen)


def test_downloads_fetch_only_what_the_run_loads_and_the_log_says_what_and_how_large_first(
    online, published, by_folder, caplog
):
    cache = ModelCache()
    with caplog.at_level(logging.INFO, logger=hub.__name__):
        result = generate(Settings(**RUN), cache=cache)
    prior, decoder = published[DEFAULT_PRIOR], published[DEFAULT_DECODER]
    expected = loaded_files(
        DEFAULT_PRIOR, prior, "text_encoder", "tokenizer", "prior", "scheduler", "image_processor"
    ) + loaded_files(DEFAULT_DECODER, decoder, "unet", "scheduler", "movq")
    assert sorted(online.downloaded()) == sorted(expected)
    assert np.array_equal(result.images[0], by_folder("text2img"))
    # For each repo: the plan (files and sizes), then progress to 100%, then the total; all before the next repo.
    messages = [record.getMessage() for record in caplog.records if record.name == hub.__name__]
    plans = [index for index, message in enumerate(messages) if ": downloading " in message]
    assert len(plans) == 2
    decoder_weights = ["unet/diffusion_pytorch_model.safetensors", "movq/diffusion_pytorch_model.safetensors"]
    size = sum(len(decoder[path]) for path in decoder_weights)
    plan = messages[plans[0]]
    assert plan.startswith(f"infer_kandinsky_2_2: model_name: downloading 2 file(s), {hub._size(size)}, of ")
    assert all(f"{path} ({hub._size(len(decoder[path]))})" in plan for path in decoder_weights)
    assert messages[0].startswith("infer_kandinsky_2_2: model_name: reading the configs: 4 file(s), ")
    progress = [message for message in messages[plans[0] + 1 : plans[1]] if ": downloaded " in message]
    assert progress[-2].startswith(f"infer_kandinsky_2_2: model_name: downloaded {hub._size(size)} of ")
    assert "(100%)" in progress[-2]
    assert re.fullmatch(rf"infer_kandinsky_2_2: model_name: downloaded {hub._size(size)} in \d+ s", progress[-1])

    # mix then fetches the image encoder alone; a run already cached asks the hub nothing.
    before = len(online.downloaded())
    load_for(Settings(mode="mix", **RUN), cache)
    encoder = ["image_encoder/config.json", "image_encoder/model.safetensors"]
    assert sorted(online.downloaded()[before:]) == [f"{DEFAULT_PRIOR}:{path}" for path in encoder]
    requests = len(online.requests)
    load_for(Settings(mode="mix", **RUN), ModelCache())
    assert len(online.requests) == requests


def test_the_controlnet_repo_downloads_at_its_pinned_commit_without_pickles(online, published):
    load_for(Settings(mode="controlnet_depth", **RUN), ModelCache())
    files = published[DEFAULT_CONTROLNET_DECODER]
    assert sorted(path for path in online.downloaded() if DEFAULT_CONTROLNET_DECODER in path) == loaded_files(
        DEFAULT_CONTROLNET_DECODER, files, "unet", "scheduler", "movq"
    )
    assert any(f"/resolve/{PINNED}/" in path for _, path in online.requests)
    snapshot = hub.snapshot_folder(hub.parse_model_name(DEFAULT_CONTROLNET_DECODER, "model_name"))
    assert snapshot.name == PINNED


def test_a_decoder_of_another_kind_is_refused_from_its_configs_before_any_weight_or_the_prior_is_fetched(
    online, published
):
    settings = Settings(mode="inpaint", model_name=f"{DEFAULT_DECODER}@main", **RUN)
    assert refusal(settings, INPUTS["inpaint"]) == (
        f"model_name: '{DEFAULT_DECODER}@main' cannot serve inpaint: it is a KandinskyV22Pipeline repo whose UNet "
        "takes 4 input channels with added embedding 'image' (a text-to-image decoder, for text2img, img2img, mix); "
        "inpaint needs an inpainting decoder (a UNet with 9 input channels and added embedding 'image'), such as "
        f"{DEFAULT_INPAINT_DECODER}."
    )
    assert sorted(online.downloaded()) == [
        f"{DEFAULT_DECODER}:{path}"
        for path in ("model_index.json", "movq/config.json", "scheduler/scheduler_config.json", "unet/config.json")
    ]


@pytest.mark.parametrize(
    ("model_name", "message"),
    [
        ("someone/absent", "model_name: 'someone/absent' was not found on the Hugging Face hub (or is private)."),
        (
            f"{DEFAULT_DECODER}@v9",
            f"model_name: '{DEFAULT_DECODER}@v9' has no revision 'v9' on the Hugging Face hub.",
        ),
    ],
)
def test_a_repo_or_revision_the_hub_does_not_have_is_named(online, model_name, message):
    assert refusal(Settings(model_name=model_name, **RUN)) == message


def test_an_unreachable_hub_is_said_so(cache_folder):
    with hub_at("http://127.0.0.1:9"), pytest.raises(HubUnreachable) as refused:
        generate(Settings(**RUN), cache=ModelCache())
    assert str(refused.value) == (
        f"model_name: {DEFAULT_DECODER!r} is not in the local Hugging Face cache ({cache_folder}) and could not be "
        "fetched: the hub is unreachable from this machine."
    )


def test_a_repo_whose_model_weights_are_pickles_only_is_refused_before_downloading_them(online, published):
    files = pickled(published[DEFAULT_DECODER])
    with FakeHub({"someone/pickled": FakeRepo.of(files)}) as fake, hub_at(fake.endpoint):
        with pytest.raises(ModelLoadError) as refused:
            generate(Settings(model_name="someone/pickled", **RUN), cache=ModelCache())
        assert all(path.endswith((".json", ".txt")) for path in fake.downloaded())
    assert str(refused.value) == (
        "model_name: 'someone/pickled' holds its weights only as pickle files (unet/diffusion_pytorch_model.bin, "
        "movq/diffusion_pytorch_model.bin), which the task never loads (unpickling can run code); accepted: "
        "safetensors weights. Use a revision of the repo that has them (owner/name@revision)."
    )


def test_a_cached_repo_loads_without_any_request(online):
    load_for(Settings(**RUN), ModelCache())
    requests = len(online.requests)
    load_for(Settings(**RUN), ModelCache())
    assert len(online.requests) == requests


def readme_commands() -> list[list[str]]:
    """The ``hf download`` commands of the offline recipe (docs/downloads.md), as argument lists."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "downloads.md").read_text(encoding="utf-8")
    block = text.split("<!-- download-commands:start -->", 1)[1].split("<!-- download-commands:end -->", 1)[0]
    joined = block.replace("\\\n", " ")
    return [line.split() for line in joined.splitlines() if line.startswith("hf download ")]


@pytest.mark.slow
def test_the_readmes_commands_fetch_exactly_what_the_modes_load_then_every_mode_runs_offline(
    online, cache_folder, monkeypatch
):
    commands = readme_commands()
    assert len(commands) == 5
    environment = {
        **os.environ,
        "HF_ENDPOINT": online.endpoint,
        "HF_HUB_CACHE": str(cache_folder),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    hf = str(Path(sys.executable).parent / "hf")
    for command in commands:
        subprocess.run([hf, *command[1:]], env=environment, check=True, capture_output=True, timeout=120)
    fetched = set()
    for command in commands:
        repo, files = command[2], command[3:]
        if files[0] == "--revision":
            files = files[2:]
        fetched |= {f"{repo}:{path}" for path in files}
    assert sorted(online.downloaded()) == sorted(fetched)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for mode, inputs in INPUTS.items():
        generate(mode_settings(mode, negative_prompt=""), inputs, cache=ModelCache())


def test_a_misspelt_prior_is_refused_before_any_weight_of_the_decoder_is_fetched(online):
    settings = Settings(prior_model_name=f"{DEFAULT_PRIOR}x", **RUN)
    assert refusal(settings) == (
        f"prior_model_name: '{DEFAULT_PRIOR}x' was not found on the Hugging Face hub (or is private)."
    )
    assert online.downloaded() and all(path.endswith((".json", ".txt")) for path in online.downloaded())


def test_a_prior_given_as_model_name_by_hub_id_is_named_as_a_prior(online):
    assert refusal(Settings(model_name=f"{DEFAULT_PRIOR}@main", **RUN)) == (
        f"model_name: '{DEFAULT_PRIOR}@main' cannot serve text2img: it is a KandinskyV22PriorPipeline repo without a "
        "UNet (a prior, for prior_model_name); text2img needs a text-to-image decoder (a UNet with 4 input channels "
        "and added embedding 'image'), such as kandinsky-community/kandinsky-2-2-decoder."
    )


def test_a_repo_with_only_variant_weights_says_so(online, published):
    files = dict(published[DEFAULT_DECODER])
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = files.pop("unet/diffusion_pytorch_model.safetensors")
    with (
        FakeHub({"someone/variants": FakeRepo.of(files)}) as fake,
        hub_at(fake.endpoint),
        pytest.raises(ModelLoadError) as refused,
    ):
        generate(Settings(model_name="someone/variants", **RUN), cache=ModelCache())
    assert str(refused.value) == (
        "model_name: 'someone/variants' has no safetensors weights in unet/ (only "
        "unet/diffusion_pytorch_model.fp16.safetensors: variant files, which the task does not load); accepted: a "
        "repo with weights named diffusion_pytorch_model.safetensors or model.safetensors (or shards)."
    )


def test_a_shortened_commit_hash_is_refused_saying_what_is_accepted(cache_folder):
    assert refusal(Settings(model_name=f"{DEFAULT_DECODER}@08632524", **RUN)) == (
        f"model_name: '{DEFAULT_DECODER}@08632524' names revision '08632524', which looks like a shortened commit "
        "hash; accepted: a full 40-character commit hash, a branch, a tag or refs/pr/N."
    )
