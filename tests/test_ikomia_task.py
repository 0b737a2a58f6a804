"""The plugin through the real Ikomia API (ikomia 0.16.1), loaded by name from a throwaway root."""

import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from PIL import Image

from helpers import (
    TASK_NAME,
    attention_processor_lora,
    diffusers_reference,
    max_difference,
    model_cache,
    random_image,
    workflow_with,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

pytest.importorskip("ikomia.dataprocess.workflow")


@pytest.fixture
def reference(tiny_strings) -> np.ndarray:
    settings = Settings.from_strings(tiny_strings)
    return diffusers_reference(settings, settings.seed)[0]


def test_the_plugin_loads_by_name_and_describes_itself_for_the_hub():
    from ikomia.dataprocess.registry import ik_registry

    _workflow, task = workflow_with({})
    info = ik_registry.get_algorithm_info(TASK_NAME)
    assert info.name == TASK_NAME
    assert info.article == "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent Diffusion"
    assert info.original_repository == "https://github.com/ai-forever/Kandinsky-2"
    assert info.algo_tasks == "IMAGE_GENERATION"
    assert info.min_ikomia_version == "0.16.0"
    assert info.icon_path.endswith("images/icon.png")
    assert task.get_input_count() == 0
    assert task.get_output_count() == 2


def test_the_hardware_information_is_the_measured_need_rounded_up_and_the_readme_says_so():
    from ikomia.dataprocess.registry import ik_registry

    workflow_with({})
    hardware = ik_registry.get_algorithm_info(TASK_NAME).hardware_config
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    ram = json.loads((results / "load_memory" / "dev-cpu_2026-12-07.json").read_text(encoding="utf-8"))
    cpu_run = next(case for case in ram["cases"] if case["case"] == "text2img-float32-run")
    gpu = json.loads((results / "h200_2026-11-27.json").read_text(encoding="utf-8"))
    lightest = min(case["peak_memory_gb"] for name, case in gpu["cases"].items() if name.endswith("offload"))
    assert (hardware.min_ram, hardware.min_vram) == (math.ceil(cpu_run["peak_rss_gb"]), math.ceil(lightest))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"The task declares {hardware.min_ram} GB of RAM" in readme
    assert f"and {hardware.min_vram} GB of GPU memory (model_offload" in readme
    assert not hardware.gpu_required


def test_parameters_round_trip_through_ikomia_strings(tiny_strings):
    _, task = workflow_with(tiny_strings)
    assert task.get_parameters() == {**Settings().to_strings(), **tiny_strings}


def test_a_run_gives_diffusers_pixels_and_the_metadata(tiny_strings, reference):
    workflow, task = workflow_with(tiny_strings)
    workflow.run()
    image = task.get_output(0).get_image()
    assert image.dtype == np.uint8
    assert max_difference(image, reference) <= 1
    metadata = task.get_output(1).data
    assert metadata["seed"] == 1234
    assert (metadata["device"], metadata["dtype"]) == ("cpu", "float32")
    assert metadata["model_name"] == tiny_strings["model_name"]
    assert metadata["prior_model_name"] == tiny_strings["prior_model_name"]
    assert set(metadata["seconds"]) == {"load", "prior", "decoder", "total"}


def test_task_instances_share_models_and_reload_only_what_changed(tiny_strings, reference, other_decoder):
    first_workflow, first = workflow_with(tiny_strings)
    first_workflow.run()
    cache = model_cache(first)
    loads = dict(cache.load_counts)
    second_workflow, second = workflow_with(tiny_strings)
    second_workflow.run()
    first_workflow.run()
    assert cache.load_counts == loads
    assert np.array_equal(second.get_output(0).get_image(), first.get_output(0).get_image())
    second.set_parameters({"model_name": str(other_decoder)})
    second_workflow.run()
    assert cache.load_counts == {**loads, "decoder": loads["decoder"] + 1}


def test_a_lora_set_from_python_changes_the_picture_reloads_nothing_and_is_listed_in_the_metadata(
    tiny_strings, tiny_repos, tmp_path
):
    unet = UNet2DConditionModel.from_pretrained(tiny_repos.decoder / "unet")
    lora = attention_processor_lora(unet, "unet", tmp_path / "style.safetensors", seed=1).path
    workflow, task = workflow_with(tiny_strings)
    workflow.run()
    plain = task.get_output(0).get_image()
    cache = model_cache(task)
    loads = dict(cache.load_counts)
    task.set_parameters({"lora": str(lora), "lora_scale": "0.5"})
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), plain) > 8
    assert task.get_output(1).data["lora"] == [
        {"lora": str(lora), "file": str(lora), "scale": 0.5, "models": ["the decoder's UNet"]}
    ]
    task.set_parameters({"lora": "", "lora_scale": ""})
    workflow.run()
    assert task.get_output(1).data["lora"] == []
    assert cache.load_counts == loads


def test_init_long_process_preloads_the_models(tiny_strings, other_decoder):
    workflow, task = workflow_with({**tiny_strings, "model_name": str(other_decoder) + "/"})
    cache = model_cache(task)
    workflow.init_long_process()
    assert cache.loaded_keys()["decoder"].model_name == str(other_decoder) + "/"
    loads = dict(cache.load_counts)
    workflow.run()
    assert cache.load_counts == loads


def test_progress_advances_once_per_prior_and_decoder_step(tiny_strings):
    workflow, task = workflow_with(tiny_strings)
    steps = []
    task.emit_step_progress = lambda: steps.append(1)
    assert task.get_progress_steps() == 3 + 4
    workflow.run()
    assert len(steps) == 3 + 4


def test_stop_ends_a_running_generation_and_the_task_stays_usable(tiny_strings, reference):
    workflow, task = workflow_with(tiny_strings)
    steps = []

    def step_then_stop_at_the_fifth() -> None:
        steps.append(1)
        if len(steps) == 5:
            task.stop()

    task.emit_step_progress = step_then_stop_at_the_fifth
    stopped = "Generation stopped by the user after step 2 of 4 of the decoder."
    with pytest.raises(RuntimeError, match=re.escape(stopped)):
        workflow.run()
    assert len(steps) == 5
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), reference) <= 1


def test_a_bad_value_is_refused_before_any_model_work_and_nothing_is_lost(tiny_strings, reference):
    workflow, task = workflow_with(tiny_strings)
    cache = model_cache(task)
    loads = dict(cache.load_counts)
    task.set_parameters({"height": "100", "model_name": "/no/such/folder"})
    refused = "height: received '100'; accepted: a multiple of 64 from 64 to 2048."
    with pytest.raises(RuntimeError, match=re.escape(refused)):
        workflow.run()
    assert cache.load_counts == loads
    assert task.get_parameters()["height"] == "100"
    assert not task.get_output(1).data
    task.set_parameters({"height": "64", "model_name": tiny_strings["model_name"]})
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), reference) <= 1


def test_numbers_and_booleans_from_python_are_taken_as_their_strings(tiny_strings):
    workflow, task = workflow_with(tiny_strings)
    task.set_parameters({"num_images": 2, "cuda": False, "guidance_scale": 1.0, "height": 64, "seed": 1234})
    assert {name: task.get_parameters()[name] for name in ("num_images", "cuda", "guidance_scale")} == {
        "num_images": "2",
        "cuda": "False",
        "guidance_scale": "1.0",
    }
    workflow.run()
    settings = Settings.from_strings({**tiny_strings, "num_images": "2"})
    assert max_difference(task.get_output(2).get_image(), diffusers_reference(settings, settings.seed)[1]) <= 1
    task.set_parameters({"num_images": 2.5})
    with pytest.raises(RuntimeError, match=re.escape("num_images: received '2.5'; accepted: a whole number")):
        workflow.run()


def test_a_model_that_cannot_load_names_its_parameter(tiny_strings, tmp_path):
    workflow, _task = workflow_with({**tiny_strings, "prior_model_name": str(tmp_path / "absent")})
    with pytest.raises(RuntimeError, match=re.escape(f"prior_model_name: folder '{tmp_path / 'absent'}' not found;")):
        workflow.run()


def test_the_hub_test_entry_point_returns_ok(tiny_strings):
    from infer_kandinsky_2_2.infer_kandinsky_2_2_test import test as hub_test

    _, task = workflow_with(tiny_strings)
    parameters, status = hub_test(task, {})
    assert status == "OK"
    assert parameters == task.get_parameters()


def test_the_first_run_counts_in_its_metadata_the_loading_ikomia_starts_inside_it(tiny_strings, tmp_path, monkeypatch):
    decoder = tmp_path / "decoder"
    shutil.copytree(tiny_strings["model_name"], decoder)
    workflow, task = workflow_with({**tiny_strings, "model_name": str(decoder)})
    module = sys.modules[type(task).__module__]
    load, loads, choose, chosen = module.load_models, [], module.runtime_for, []

    def timed(settings, runtime, cache):
        started = time.perf_counter()
        result = load(settings, runtime, cache)
        loads.append(time.perf_counter() - started)
        chosen.append(("loaded on", runtime))
        return result

    monkeypatch.setattr(module, "load_models", timed)
    monkeypatch.setattr(
        module, "runtime_for", lambda settings: chosen.append(("chose", choose(settings))) or chosen[-1][1]
    )
    workflow.run()
    # Ikomia calls init_long_process from the first run's begin_task_run: the models load there, on the runtime
    # the run chose once.
    assert len(loads) == 1
    assert [what for what, _ in chosen] == ["chose", "loaded on"] and chosen[0][1] is chosen[1][1]
    seconds = task.get_output(1).data["seconds"]
    assert seconds["load"] >= loads[0]
    assert seconds["total"] >= seconds["load"] + seconds["prior"] + seconds["decoder"] - 0.001
    workflow.run()
    assert len(loads) == 1
    assert task.get_output(1).data["seconds"]["load"] < loads[0]


def test_the_engines_log_lines_reach_ikomias_log_once(tiny_strings):
    from ikomia.core import config

    workflow_with(tiny_strings)
    line = "infer_kandinsky_2_2: model_name: downloading 2 file(s), 5.28 GB, of a repo (a test line)"
    logging.getLogger("infer_kandinsky_2_2.kandinsky22_engine.hub").info(line)
    for handler in logging.getLogger("ikomia").handlers:
        handler.flush()
    log = Path(config.main_cfg["root_folder"]) / "log.txt"
    assert log.read_text(encoding="utf-8").count(line) == 1


def test_a_cpu_run_says_what_sizes_its_thread_teams_and_repeats_with_the_same_teams(tiny_strings):
    import torch

    workflow, task = workflow_with(tiny_strings)
    threads = torch.get_num_threads()
    pictures = []
    try:
        # One thread: a team cannot be smaller, whatever the load.
        torch.set_num_threads(1)
        for _ in range(2):
            workflow.run()
            pictures.append(task.get_output(0).get_image())
    finally:
        torch.set_num_threads(threads)
    said = task.get_output(1).data["cpu_threads"]
    assert said["threads"] == 1 and isinstance(said["teams_follow_load"], bool)
    assert set(said["load_average_15min"]) == {"start", "end"}
    assert all(0 <= load < 1000 for load in said["load_average_15min"].values())
    assert np.array_equal(*pictures)


def test_a_folder_of_images_runs_through_img2img_and_each_picture_and_its_metadata_are_saved(tiny_strings, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for seed, name in enumerate(("beach", "forest", "street")):
        Image.fromarray(random_image(seed, (48 + 16 * seed, 96, 3))).save(pictures / f"{name}.png")
    parameters = {**tiny_strings, "mode": "img2img", "strength": "0.5"}
    workflow, task = workflow_with(parameters)
    workflow.connect_tasks(workflow.root(), task, [(0, 0)])
    workflow.set_output_folder(str(tmp_path / "out"))
    workflow.run_on(folder=str(pictures))

    # Ikomia writes a run's outputs in a new timestamped folder under the output folder: output 0 as
    # <task name><file name>.png and output 1, the metadata, as JSON in <task name><file name>, no extension.
    run_folder = Path(workflow.get_last_run_folder())
    assert run_folder.parent == tmp_path / "out"
    saved = sorted(path.name for path in run_folder.glob("*.png"))
    assert saved == [f"{TASK_NAME}{name}.png" for name in ("beach", "forest", "street")]
    single_workflow, single = workflow_with(parameters)
    single_workflow.connect_tasks(single_workflow.root(), single, [(0, 0)])
    for name in ("beach", "forest", "street"):
        single_workflow.run_on(path=str(pictures / f"{name}.png"))
        picture = np.asarray(Image.open(run_folder / f"{TASK_NAME}{name}.png"))
        assert np.array_equal(picture, single.get_output(0).get_image())
        metadata = json.loads((run_folder / f"{TASK_NAME}{name}").read_text(encoding="utf-8"))
        assert metadata["mode"] == "img2img" and metadata["seed"] == 1234
        assert metadata["inputs"] == single.get_output(1).data["inputs"]
