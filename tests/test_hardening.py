"""What holds when things go wrong: bad values and inputs, long prompts, out of memory, threads, long runs,
untrusted model names, and code that never evaluates user strings."""

import ast
import ctypes
import gc
import logging
import re
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from hypothesis import given
from hypothesis import strategies as st

from helpers import diffusers_reference, max_difference, model_cache, workflow_with
from infer_kandinsky_2_2.kandinsky22_engine import hub
from infer_kandinsky_2_2.kandinsky22_engine.errors import ModelLoadError
from infer_kandinsky_2_2.kandinsky22_engine.generation import load_models, runtime_for
from infer_kandinsky_2_2.kandinsky22_engine.parameters import PARAMETERS, Settings, SettingsError

pytest.importorskip("ikomia.dataprocess.workflow")
core = pytest.importorskip("ikomia.core")
CHECKOUT = Path(__file__).resolve().parent.parent
WIDE = np.zeros((64, 128, 3), np.uint8)

BAD_VALUES = [
    (
        "mode",
        "txt2img",
        "mode: received 'txt2img'; accepted: one of text2img, img2img, inpaint, outpaint, controlnet_depth, "
        "controlnet_img2img, mix.",
    ),
    ("mode", " ", "mode: received ' '; accepted: one of"),
    ("model_name", "", "model_name: received ''; accepted: non-empty text."),
    ("prior_model_name", "\t", "prior_model_name: received '\\t'; accepted: non-empty text."),
    ("prior_num_inference_steps", "1", "prior_num_inference_steps: received '1'; accepted: a whole number from 2"),
    ("prior_num_inference_steps", "-3", "prior_num_inference_steps: received '-3'; accepted: a whole number"),
    ("prior_num_inference_steps", "ten", "prior_num_inference_steps: received 'ten'; accepted: a whole number"),
    ("prior_guidance_scale", "nan", "prior_guidance_scale: received 'nan'; accepted: a number from 1 to 20."),
    ("prior_guidance_scale", "-inf", "prior_guidance_scale: received '-inf'; accepted: a number from 1 to 20."),
    ("prior_guidance_scale", "21", "prior_guidance_scale: received '21'; accepted: a number from 1 to 20."),
    ("num_inference_steps", "0", "num_inference_steps: received '0'; accepted: a whole number from 1 to 1000."),
    ("num_inference_steps", "1e9", "num_inference_steps: received '1e9'; accepted: a whole number from 1 to 1000."),
    ("num_inference_steps", "3.5", "num_inference_steps: received '3.5'; accepted: a whole number from 1 to 1000."),
    ("guidance_scale", "0.99", "guidance_scale: received '0.99'; accepted: a number from 1 to 20."),
    ("guidance_scale", "inf", "guidance_scale: received 'inf'; accepted: a number from 1 to 20."),
    ("guidance_scale", "", "guidance_scale: received ''; accepted: a number from 1 to 20."),
    ("scheduler", "dpmpp_2m", "scheduler: received 'dpmpp_2m'; accepted: one of default, DDIM, DPM++ 2M, DPM++ 2M"),
    ("strength", "1.5", "strength: received '1.5'; accepted: a number from 0 to 1."),
    ("strength", "NaN", "strength: received 'NaN'; accepted: a number from 0 to 1."),
    ("prior_strength", "-0.1", "prior_strength: received '-0.1'; accepted: a number from 0 to 1."),
    ("height", "100", "height: received '100'; accepted: a multiple of 64 from 64 to 2048."),
    ("height", "4096", "height: received '4096'; accepted: a multiple of 64 from 64 to 2048."),
    ("width", "-64", "width: received '-64'; accepted: a multiple of 64 from 64 to 2048."),
    ("width", "0x40", "width: received '0x40'; accepted: a multiple of 64 from 64 to 2048."),
    ("num_images", "0", "num_images: received '0'; accepted: a whole number from 1 to 16."),
    ("num_images", "100", "num_images: received '100'; accepted: a whole number from 1 to 16."),
    ("seed", "-2", "seed: received '-2'; accepted: a whole number from -1 to 9223372036854775807."),
    ("seed", "9223372036854775808", "seed: received '9223372036854775808'; accepted: a whole number from -1"),
    ("seed", "4.2", "seed: received '4.2'; accepted: a whole number from -1 to 9223372036854775807."),
    ("mix_images", "0", "mix_images: received '0'; accepted: a whole number from 1 to 8."),
    (
        "lora",
        "a.safetensors,,b.safetensors",
        "lora: received 'a.safetensors,,b.safetensors', which has an empty entry; accepted: LoRA weights (files, "
        "folders or hub ids) separated by single commas.",
    ),
    (
        "lora_scale",
        "x",
        "lora_scale: received 'x'; accepted: one number per entry of lora, in order, separated by commas or spaces "
        "(0 for lora, which is empty), or empty for 1 each.",
    ),
    ("mix_images", "9", "mix_images: received '9'; accepted: a whole number from 1 to 8."),
    ("mask_mode", "invert", "mask_mode: received 'invert'; accepted: one of repaint, keep."),
    ("paste_back", "sometimes", "paste_back: received 'sometimes'; accepted: True or False."),
    ("outpaint_top", "-8", "outpaint_top: received '-8'; accepted: a whole number from 0 to 1984."),
    ("outpaint_bottom", "2048", "outpaint_bottom: received '2048'; accepted: a whole number from 0 to 1984."),
    ("outpaint_left", "10%", "outpaint_left: received '10%'; accepted: a whole number from 0 to 1984."),
    ("outpaint_right", "0.25", "outpaint_right: received '0.25'; accepted: a whole number from 0 to 1984."),
    ("outpaint_overlap", "300", "outpaint_overlap: received '300'; accepted: a whole number from 0 to 256."),
    ("cuda", "maybe", "cuda: received 'maybe'; accepted: True or False."),
    ("cuda", "", "cuda: received ''; accepted: True or False."),
    ("cuda_device", "-1", "cuda_device: received '-1'; accepted: a whole number of at least 0."),
    ("cuda_device", "gpu1", "cuda_device: received 'gpu1'; accepted: a whole number of at least 0."),
    ("memory_mode", "cpu", "memory_mode: received 'cpu'; accepted: one of gpu, prior_offload, model_offload, sequen"),
    ("cuda_graphs", "maybe", "cuda_graphs: received 'maybe'; accepted: True or False. Replay the prior's and the"),
    ("compile_unet", "max-autotune", "compile_unet: received 'max-autotune'; accepted: one of off, default, reduce-ov"),
]
BAD_COMBINATIONS = [
    ({"mode": "img2img", "strength": "0.0"}, "strength: received '0.0' with num_inference_steps 4; accepted"),
    (
        {"mode": "controlnet_img2img", "prior_strength": "0.2"},
        "prior_strength: received '0.2' with prior_num_inference_steps 3; accepted",
    ),
    ({"mode": "outpaint", "outpaint_left": "0", "outpaint_right": "0"}, "outpaint: every margin is 0"),
    ({"mode": "outpaint", "outpaint_left": "64"}, "outpaint_left + outpaint_right: received 64 + 128 = 192 with"),
    ({"mode": "mix", "mix_weights": "1, 1"}, "mix_weights: received '1, 1'; accepted: 3 numbers"),
    ({"mode": "mix", "mix_weights": "1, -1, 1"}, "mix_weights: received '1, -1, 1'; accepted: 3 numbers"),
    ({"mode": "mix", "mix_weights": "0 0 0"}, "mix_weights: received '0 0 0'; accepted: 3 numbers"),
    ({"mode": "mix", "mix_weights": "exec('x')"}, "mix_weights: received \"exec('x')\"; accepted: 3 numbers"),
    ({"model_name": "https://example.com/model"}, "model_name: 'https://example.com/model' is a URL; accepted: a"),
    ({"model_name": "a/b/../../../etc"}, "model_name: folder 'a/b/../../../etc' not found; accepted: an existing"),
]


@pytest.fixture
def expected(tiny_strings) -> np.ndarray:
    settings = Settings.from_strings(tiny_strings)
    return diffusers_reference(settings, settings.seed)[0]


def test_a_misspelt_parameter_name_is_refused_when_set_not_dropped():
    _, task = workflow_with({})
    with pytest.raises(SettingsError) as refused:
        task.set_parameters({"num_inference_step": "30"})
    # The closest known names first, then every one.
    assert str(refused.value).startswith(
        "num_inference_step: unknown parameter; did you mean num_inference_steps or prior_num_inference_steps? "
        "Known parameters: mode, model_name, prior_model_name, "
    )
    assert "num_inference_step" not in task.get_parameters()


def test_every_parameter_but_free_text_has_a_bad_value_case():
    # Any text parses; a depth_model that cannot load is refused when it loads (tests/test_depth_estimation.py).
    free_text = {"prompt", "negative_prompt", "negative_prior_prompt", "mix_weights", "depth_model"}
    assert {name for name, _, _ in BAD_VALUES} == {parameter.name for parameter in PARAMETERS} - free_text


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_clearly(tiny_strings, name, value, message):
    # At the engine, where the rule lives; test_after_every_refusal_the_task_and_a_new_one_run_unchanged runs each
    # case through Ikomia.
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_strings({**tiny_strings, name: value})


def with_inputs_of_its_mode(parameters: dict[str, str]):
    """A workflow of the task with ``parameters``, its input 0 fed by the workflow's input, and a picture in every
    other input: Ikomia runs a task only when one of its inputs is connected."""
    workflow, task = workflow_with(parameters)
    if task.get_input_count():
        workflow.connect_tasks(workflow.root(), task, [(0, 0)])
        workflow.set_image_input(WIDE, index=0)
    for index in range(1, task.get_input_count()):
        if task.get_input(index).data_type != core.IODataType.INPUT_GRAPHICS:
            task.get_input(index).set_image(WIDE)
    return workflow


@pytest.mark.parametrize(("changes", "message"), BAD_COMBINATIONS)
def test_a_bad_combination_or_model_name_is_refused_clearly(tiny_strings, warm_cache, changes, message):
    # At the engine: the settings' checks, then the models', which find and read every model before loading any.
    with pytest.raises((SettingsError, ModelLoadError), match=re.escape(message)):
        settings = Settings.from_strings({**tiny_strings, **changes})
        load_models(settings, runtime_for(settings), warm_cache)


def test_after_every_refusal_the_task_and_a_new_one_run_unchanged(tiny_strings, expected):
    workflow, task = workflow_with(tiny_strings)
    defaults = Settings().to_strings()
    # Every refusal surfaces through Ikomia with the engine's message.
    for name, value, message in BAD_VALUES:
        task.set_parameters({name: value})
        with pytest.raises(RuntimeError, match=re.escape(message)):
            workflow.run()
        task.set_parameters({name: tiny_strings.get(name, defaults[name])})
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), expected) <= 1
    for changes, message in BAD_COMBINATIONS:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            with_inputs_of_its_mode({**tiny_strings, **changes}).run()
    workflow, task = workflow_with(tiny_strings)
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), expected) <= 1


@given(st.dictionaries(st.sampled_from([parameter.name for parameter in PARAMETERS]), st.text(max_size=30)))
def test_any_strings_parse_to_settings_that_round_trip_or_to_a_settings_error(values):
    try:
        settings = Settings.from_strings(values)
    except SettingsError as error:
        assert all(
            line.split(":")[0] in {parameter.name for parameter in PARAMETERS} for line in str(error).splitlines()
        )
        return
    assert Settings.from_strings(settings.to_strings()) == settings


def test_a_long_prompt_is_cut_as_diffusers_cuts_it_and_the_metadata_and_log_say_so(tiny_strings, caplog):
    long_prompt = "a " * 80 + "red cat sitting"
    workflow, task = workflow_with({**tiny_strings, "prompt": long_prompt})
    with caplog.at_level(logging.WARNING):
        workflow.run()
    settings = Settings.from_strings({**tiny_strings, "prompt": long_prompt})
    assert max_difference(task.get_output(0).get_image(), diffusers_reference(settings, settings.seed)[0]) <= 1
    truncated = task.get_output(1).data["truncated"]
    assert set(truncated) == {"prompt"}
    assert truncated["prompt"].strip().endswith("red cat sitting")
    assert "prompt is longer than the 77 tokens CLIP reads; left out:" in caplog.text


def test_out_of_gpu_memory_says_what_to_try_empties_the_cache_and_the_next_run_works(
    tiny_strings, expected, monkeypatch
):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    original = UNet2DConditionModel.forward

    def out_of_memory(*arguments, **keywords):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", out_of_memory)
    workflow, task = workflow_with({**tiny_strings, "num_images": "2"})
    message = (
        "Out of GPU memory while generating 2 picture(s) of 128x64 in text2img with memory_mode none. Try fewer "
        "images or a smaller size. The GPU cache was emptied: the task can run again."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        workflow.run()
    assert emptied
    monkeypatch.setattr(UNet2DConditionModel, "forward", original)
    task.set_parameters({"num_images": "1"})
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), expected) <= 1


@pytest.mark.parametrize(
    ("memory_mode", "advice"),
    [
        ("gpu", "with memory_mode gpu. Try memory_mode model_offload (less memory, slower), fewer images"),
        ("prior_offload", "with memory_mode prior_offload. Try memory_mode model_offload (less memory, slower), fewer"),
        # Measured at 768x768, sequential_offload used no less memory than model_offload: not offered.
        ("model_offload", "with memory_mode model_offload. Try fewer images"),
        ("sequential_offload", "with memory_mode sequential_offload. Try fewer images"),
    ],
)
def test_out_of_memory_advice_offers_model_offload_from_the_faster_modes_only(memory_mode, advice):
    from infer_kandinsky_2_2.kandinsky22_engine.errors import GenerationOutOfMemory
    from infer_kandinsky_2_2.kandinsky22_engine.generation import _explain_out_of_memory
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    runtime = Runtime("cuda", torch.float16, memory_mode)
    with pytest.raises(GenerationOutOfMemory, match=re.escape(advice)), _explain_out_of_memory(Settings(), runtime):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_with_cuda_graphs_drops_the_gpus_graphs_and_offers_to_turn_them_off(monkeypatch):
    from infer_kandinsky_2_2.kandinsky22_engine import graphs
    from infer_kandinsky_2_2.kandinsky22_engine.errors import GenerationOutOfMemory
    from infer_kandinsky_2_2.kandinsky22_engine.generation import _explain_out_of_memory
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    dropped = []
    monkeypatch.setattr(graphs, "drop_on", dropped.append)
    advice = (
        "with memory_mode gpu. Try cuda_graphs False (its graphs keep memory of their own), memory_mode "
        "model_offload (less memory, slower), fewer images"
    )
    settings, error = Settings(cuda_graphs=True), torch.cuda.OutOfMemoryError("CUDA out of memory.")
    explained = _explain_out_of_memory(settings, Runtime("cuda:1", torch.float16, "gpu"))
    with pytest.raises(GenerationOutOfMemory, match=re.escape(advice)), explained:
        raise error
    assert dropped == ["cuda:1"]
    # Where no stage is graphed (model_offload), graphs are neither dropped nor mentioned.
    explained = _explain_out_of_memory(settings, Runtime("cuda:1", torch.float16, "model_offload"))
    with (
        pytest.raises(GenerationOutOfMemory, match=re.escape("with memory_mode model_offload. Try fewer images")),
        explained,
    ):
        raise error
    assert dropped == ["cuda:1"]


# Slow where two runs at once outnumber the CPU's cores: their threads then take turns.
@pytest.mark.slow
def test_two_workflows_in_two_threads_load_the_models_once_and_match_the_serial_images(
    tiny_strings, tiny_repos, tmp_path
):
    prior, decoder = tmp_path / "prior", tmp_path / "decoder"
    shutil.copytree(tiny_repos.prior, prior)
    shutil.copytree(tiny_repos.decoder, decoder)
    # The smallest run will do: what matters is that the two start at once, both to load and to generate.
    smallest = {"height": "64", "width": "64", "prior_num_inference_steps": "2", "num_inference_steps": "2"}
    parameters = [
        {**tiny_strings, **smallest, "prior_model_name": str(prior), "model_name": str(decoder), "seed": str(seed)}
        for seed in (11, 12)
    ]
    tasks = [workflow_with(each) for each in parameters]
    cache = model_cache(tasks[0][1])
    loads = dict(cache.load_counts)
    start = threading.Barrier(2)
    errors = []

    def run(workflow) -> None:
        start.wait()
        try:
            workflow.run()
        except Exception as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=run, args=(workflow,)) for workflow, _ in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.load_counts["prior"] - loads.get("prior", 0) == 1
    assert cache.load_counts["decoder"] - loads.get("decoder", 0) == 1
    for (_, task), each in zip(tasks, parameters, strict=True):
        # The copies hold the tiny repos' weights: the reference loads the tiny repos, which it keeps.
        settings = replace(
            Settings.from_strings(each), **{name: tiny_strings[name] for name in ("prior_model_name", "model_name")}
        )
        assert max_difference(task.get_output(0).get_image(), diffusers_reference(settings, settings.seed)[0]) <= 1


def resident_megabytes() -> float:
    """Resident memory held by live objects: garbage is collected and glibc hands its free heap back first,
    so that what the allocators keep cached for reuse does not read as growth."""
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


RUNS = 200
RESIDENT_GROWTH_BOUND_MB = 64


@pytest.mark.slow
def test_two_hundred_runs_keep_memory_bounded_and_the_same_seed_the_same_image(tiny_strings):
    workflow, task = workflow_with({**tiny_strings, "height": "64", "width": "64"})
    workflow.run()
    first = task.get_output(0).get_image().copy()
    for _ in range(20):
        workflow.run()
    baseline = resident_megabytes()
    for index in range(21, RUNS):
        workflow.run()
        assert np.array_equal(task.get_output(0).get_image(), first), f"run {index + 1} gave another image"
    growth = resident_megabytes() - baseline
    assert growth < RESIDENT_GROWTH_BOUND_MB, f"resident memory grew {growth:.1f} MB over {RUNS - 21} runs"


def test_weights_load_from_safetensors_only_and_never_with_remote_code(tiny_strings, monkeypatch, tiny_repos):
    calls = []
    original = DiffusionPipeline.from_pretrained.__func__

    def recording(cls, *arguments, **keywords):
        calls.append(keywords)
        return original(cls, *arguments, **keywords)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(recording))
    copy = Path(str(tiny_repos.decoder) + "-safety")
    shutil.copytree(tiny_repos.decoder, copy, dirs_exist_ok=True)
    workflow, _ = workflow_with({**tiny_strings, "model_name": str(copy)})
    workflow.run()
    assert calls
    for keywords in calls:
        assert keywords["use_safetensors"] is True
        assert not keywords.get("trust_remote_code")
        assert "custom_pipeline" not in keywords


def test_no_code_of_the_plugin_evaluates_a_string():
    sources = [path for path in CHECKOUT.rglob("*.py") if "tests" not in path.parts and ".venv" not in path.parts]
    assert sources
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), f"{path}:{node.lineno}"


def test_a_model_name_is_only_ever_an_id_or_a_path():
    assert hub.is_folder_name("/models/decoder") and hub.is_folder_name("./decoder")
    assert hub.is_folder_name("a/b/c") and hub.is_folder_name("~/decoder")
    assert not hub.is_folder_name("kandinsky-community/kandinsky-2-2-decoder")
    assert not hub.is_folder_name("owner/name@refs/pr/5")
    assert not hub._HUB_ID.fullmatch("https://example.com/model")
    assert not hub._HUB_ID.fullmatch("owner/name; rm -rf /")
    assert not hub._HUB_ID.fullmatch("owner/name@main; rm -rf /")
    assert not hub._HUB_ID.fullmatch("owner/name@../../etc")


def backend_failure(reason: Exception) -> Exception:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed(lambda: None, reason, None)


def test_a_failed_compile_names_compile_unet_its_reason_and_the_way_out():
    from infer_kandinsky_2_2.kandinsky22_engine.errors import CompileFailed
    from infer_kandinsky_2_2.kandinsky22_engine.generation import _explain_compile_failure
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    message = (
        "compile_unet: torch.compile in mode 'reduce-overhead' failed on this machine: RuntimeError: Cannot find "
        "a working triton installation. Set compile_unet to off to run without compiling (the decoder is then "
        "loaded again)."
    )
    runtime = Runtime("cuda", torch.float16, "gpu", compile_unet="reduce-overhead")
    with pytest.raises(CompileFailed, match=f"^{re.escape(message)}$"), _explain_compile_failure(runtime):
        raise backend_failure(RuntimeError("Cannot find a working triton installation.\nMore details here."))


def test_without_compiling_errors_pass_through_unchanged():
    from infer_kandinsky_2_2.kandinsky22_engine.generation import _explain_compile_failure
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    failure = backend_failure(RuntimeError("not ours"))
    with pytest.raises(type(failure)) as raised, _explain_compile_failure(Runtime("cuda", torch.float16, "gpu")):
        raise failure
    assert raised.value is failure
    compiled = Runtime("cuda", torch.float16, "gpu", compile_unet="default")
    with pytest.raises(ValueError, match=r"^other$"), _explain_compile_failure(compiled):
        raise ValueError("other")


@pytest.mark.parametrize(("stage", "model"), [("prior", "prior"), ("decoder", "unet"), ("decoder", "movq")])
def test_values_that_are_not_finite_are_an_error_never_a_black_picture_and_the_next_run_works(
    tiny_strings, expected, stage, model
):
    workflow, task = workflow_with(tiny_strings)
    settings = Settings.from_strings(tiny_strings)
    # The engine as Ikomia loaded it with the task (it reloads plugin modules).
    task_module = sys.modules[type(task).__module__]
    pipelines = task_module.load_models(settings, task_module.runtime_for(settings), task_module.cache_for("cpu"))
    module = {
        "prior": pipelines.prior.prior,
        "unet": pipelines.decoder.unet,
        # The MoVQ's decoder, the last model of a run: infinity there would be clamped to white.
        "movq": pipelines.decoder.movq.decoder,
    }[model]

    def overflow(module: torch.nn.Module, inputs: tuple, output: tuple | torch.Tensor) -> None:
        """What a float16 overflow does: the model's output turns to NaN, or its last layer's to infinity (in
        place; the output is kept)."""
        if isinstance(output, torch.Tensor):
            output[..., :4, :4] = float("inf")
        else:
            output[0].mul_(float("nan"))

    hook = module.register_forward_hook(overflow)
    model_name = settings.prior_model_name if stage == "prior" else settings.model_name
    parameter = "prior_model_name" if stage == "prior" else "model_name"
    message = (
        f"The {stage} gave values that are not finite (NaN or infinity) for picture(s) 1 of 1, so no picture is "
        f"returned (it would be black or white). In float32 this points at broken weights: check {parameter} "
        f"{model_name!r}."
    )
    try:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            workflow.run()
    finally:
        hook.remove()
    workflow.run()
    assert max_difference(task.get_output(0).get_image(), expected) <= 1


def test_on_cuda_values_that_are_not_finite_are_explained_as_a_float16_overflow():
    from infer_kandinsky_2_2.kandinsky22_engine.errors import NotFinite
    from infer_kandinsky_2_2.kandinsky22_engine.generation import _refuse_not_finite
    from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

    decoded = torch.zeros(3, 3, 64, 64)
    decoded[1, 0, 5, 5] = float("nan")
    decoded[2, 2, 0, 0] = float("inf")
    with pytest.raises(NotFinite) as refused:
        _refuse_not_finite((decoded,), "decoder", Settings(num_images=3), Runtime("cuda", torch.float16, "gpu"))
    assert str(refused.value) == (
        "The decoder gave values that are not finite (NaN or infinity) for picture(s) 2, 3 of 3, so no picture is "
        "returned (it would be black or white). In float16 this is an overflow (a value past 65504). Try another "
        "seed or a lower guidance scale, or set cuda to False to run in float32 on the CPU."
    )
