"""The tiny repos behave like the published ones: the same configs but for the sizes, and the published layout;
the kept configs and file sizes are the published ones."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors_size import computed_sizes

from infer_kandinsky_2_2.kandinsky22_devkit.published import (
    REPOS,
    config_path,
    file_sizes,
    published_config,
    published_paths,
)
from infer_kandinsky_2_2.kandinsky22_devkit.tiny import TOKENIZER_FILES

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "hub_configs"
UNET_SIZES = {"block_out_channels", "layers_per_block", "attention_head_dim", "encoder_hid_dim", "cross_attention_dim"}
MOVQ_SIZES = {"block_out_channels", "layers_per_block", "num_vq_embeddings"}
CLIP_SIZES = {"hidden_size", "projection_dim", "intermediate_size", "num_attention_heads", "num_hidden_layers"}
# The only config keys whose values a tiny repo may change: sizes (channels, layers, heads, vocabulary).
MAY_DIFFER = {
    ("prior", "text_encoder/config.json"): CLIP_SIZES | {"vocab_size"},
    ("prior", "image_encoder/config.json"): CLIP_SIZES,
    ("prior", "prior/config.json"): {"num_attention_heads", "attention_head_dim", "embedding_dim", "num_layers"},
    **{(repo, "unet/config.json"): UNET_SIZES for repo in ("decoder", "decoder-inpaint", "controlnet-depth")},
    **{(repo, "movq/config.json"): MOVQ_SIZES for repo in ("decoder", "decoder-inpaint", "controlnet-depth")},
}


@pytest.fixture(scope="module")
def folders(tiny_repos) -> dict[str, Path]:
    return {
        "prior": tiny_repos.prior,
        "decoder": tiny_repos.decoder,
        "decoder-inpaint": tiny_repos.inpaint_decoder,
        "controlnet-depth": tiny_repos.controlnet_decoder,
    }


def configs_of(folder: Path) -> list[str]:
    """The JSON files of a repo but the tokenizer's vocabulary, which is data (a tiny one here), not a config."""
    paths = (path.relative_to(folder).as_posix() for path in folder.rglob("*.json"))
    return sorted(path for path in paths if path != "tokenizer/vocab.json")


@pytest.mark.parametrize("repo", list(REPOS))
def test_every_tiny_config_has_the_published_keys_and_values_but_for_the_sizes(folders, repo):
    for path in configs_of(folders[repo]):
        tiny = json.loads((folders[repo] / path).read_text(encoding="utf-8"))
        published = published_config(repo, path)
        assert set(tiny) == set(published), path
        differing = {key for key in tiny if tiny[key] != published[key]}
        assert differing <= MAY_DIFFER.get((repo, path), set()), (path, differing)
    assert set(published_paths(repo)) <= set(configs_of(folders[repo]))


@pytest.mark.parametrize("repo", list(REPOS))
def test_the_tiny_repos_keep_the_published_files_that_hold_no_size_byte_for_byte(folders, repo):
    for path in published_paths(repo):
        if (repo, path) not in MAY_DIFFER:
            assert (folders[repo] / path).read_bytes() == config_path(repo, path).read_bytes(), path


def test_the_tiny_prior_has_the_published_layout(folders):
    prior = folders["prior"]
    assert sorted(path.name for path in (prior / "tokenizer").iterdir()) == sorted(TOKENIZER_FILES)
    processor = json.loads((prior / "image_processor" / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert processor["feature_extractor_type"] == "CLIPFeatureExtractor"
    text_encoder = json.loads((prior / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    assert (text_encoder["bos_token_id"], text_encoder["eos_token_id"], text_encoder["pad_token_id"]) == (0, 2, 1)
    dtypes = {}
    for model in ("text_encoder", "image_encoder"):
        with safe_open(prior / model / "model.safetensors", "pt") as weights:
            dtypes[model] = {str(weights.get_slice(name).get_dtype()) for name in weights.keys()}  # noqa: SIM118 (a safetensors handle)
    assert dtypes == {"text_encoder": {"F32"}, "image_encoder": {"F16"}}


def test_the_decoder_schedulers_clip_the_sample_as_published(folders):
    clip = {
        repo: json.loads((folders[repo] / "scheduler" / "scheduler_config.json").read_text())["clip_sample"]
        for repo in ("decoder", "decoder-inpaint", "controlnet-depth")
    }
    assert clip == {"decoder": True, "decoder-inpaint": False, "controlnet-depth": True}


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared folder of published configs is not beside this checkout")
def test_the_kept_configs_are_the_shared_published_ones_byte_for_byte():
    shared = sorted(path.relative_to(SHARED).as_posix() for path in SHARED.rglob("*.json"))
    kept = sorted(f"{repo}/{path}" for repo in REPOS for path in published_paths(repo))
    assert kept == shared
    for path in shared:
        repo, _, inner = path.partition("/")
        assert config_path(repo, inner).read_bytes() == (SHARED / path).read_bytes(), path


def test_the_file_list_gives_each_kept_config_its_own_size():
    for repo, hub_id in REPOS.items():
        listed = {path: size for revision in file_sizes()[hub_id].values() for path, size in revision.items()}
        for path in published_paths(repo):
            assert listed[path] == config_path(repo, path).stat().st_size, (repo, path)


def test_the_computed_weights_sizes_are_those_the_hub_lists_to_the_byte():
    listed = {
        hub_id: {path: size for revision in revisions.values() for path, size in revision.items()}
        for hub_id, revisions in file_sizes().items()
    }
    computed = computed_sizes()
    assert {hub_id: {path: listed[hub_id][path] for path in paths} for hub_id, paths in computed.items()} == computed


def test_the_published_repos_are_the_default_models_of_the_task():
    from infer_kandinsky_2_2.kandinsky22_engine.constants import DEFAULT_PRIOR
    from infer_kandinsky_2_2.kandinsky22_engine.modes import MODES

    assert set(REPOS.values()) == {DEFAULT_PRIOR} | {mode.decoder.default_model for mode in MODES.values()}
