"""CUDA graphs (cuda_graphs), as far as the CPU can test them: which stages each memory mode graphs, that a
replay reads the run's own inputs and gives the eager run's pixels, one capture per input signature, and graphs
forgotten when the weights move or go.

The CPU has no CUDA graphs: ``EagerCapture`` stands in for ``graphs.CudaCapture`` and keeps a graph's meaning, a
replay that reads the static inputs and writes the static outputs, by running the captured forward again on
them. That a real capture replays as the eager forward does is left to the GPU benchmark (BENCHMARKS.md).
"""

from dataclasses import replace

import pytest
import torch

from helpers import EagerCapture, left_half_mask, max_difference, random_image
from infer_kandinsky_2_2.kandinsky22_engine import graphs
from infer_kandinsky_2_2.kandinsky22_engine.errors import GenerationStopped, GraphCaptureFailed
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, load_models
from infer_kandinsky_2_2.kandinsky22_engine.graphs import graphs_of
from infer_kandinsky_2_2.kandinsky22_engine.inputs import Inputs
from infer_kandinsky_2_2.kandinsky22_engine.memory import MEMORY_MODES
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime, graph_plan


@pytest.fixture
def settings(tiny_strings) -> Settings:
    return Settings.from_strings({**tiny_strings, "guidance_scale": "2.0", "cuda_graphs": "True"})


@pytest.fixture
def as_on_cuda(monkeypatch):
    """The runtime of a memory mode as on CUDA, with the CPU as the device, and graphs captured by
    ``EagerCapture``."""

    def use(memory_mode: str, compile_unet: str = "off") -> Runtime:
        monkeypatch.setattr(graphs, "CAPTURE", EagerCapture())
        return Runtime("cpu", torch.float32, memory_mode, compile_unet)

    return use


def graphed_stages(cuda_graphs: bool, runtime: Runtime) -> tuple[str, ...]:
    return tuple(stage for stage, why in graph_plan(cuda_graphs, runtime).items() if not why)


@pytest.mark.parametrize("memory_mode", [*MEMORY_MODES, "none"])
@pytest.mark.parametrize("compile_unet", ["off", "reduce-overhead"])
def test_only_the_stages_whose_weights_stay_in_place_are_graphed(memory_mode, compile_unet):
    runtime = Runtime("cuda", torch.float16, memory_mode, compile_unet)
    expected = {"gpu": ("prior", "decoder"), "prior_offload": ("decoder",)}.get(memory_mode, ())
    if compile_unet != "off":
        expected = tuple(stage for stage in expected if stage != "decoder")
    assert graphed_stages(True, runtime) == expected
    assert graphed_stages(False, runtime) == ()


def test_graphed_runs_give_the_eager_pixels_and_capture_once_per_size_batch_and_guidance(settings, as_on_cuda):
    runtime = as_on_cuda("gpu")
    eager, graphed = ModelCache(), ModelCache()
    unet = load_models(settings, runtime, graphed).decoder.unet
    prior = load_models(settings, runtime, graphed).prior.prior
    runs = [
        settings,
        replace(settings, seed=7, prompt="another prompt"),
        replace(settings, height=128),
        replace(settings, guidance_scale=1.0),
        replace(settings, num_images=2),
        replace(settings, seed=8),
    ]
    captures = []
    for run in runs:
        result = generate(run, runtime=runtime, cache=graphed)
        expected = generate(replace(run, cuda_graphs=False), runtime=runtime, cache=eager)
        assert result.metadata["cuda_graphs"] == ["prior", "decoder"]
        assert expected.metadata["cuda_graphs"] == []
        assert all(max_difference(*pair) == 0 for pair in zip(result.images, expected.images, strict=True))
        captures.append((graphs_of(prior).captures, graphs_of(unet).captures))
    # The prior's input is the same for one picture whatever the size and the decoder's guidance; a batch of two
    # is new to both.
    assert captures == [(1, 1), (1, 1), (1, 2), (1, 3), (2, 4), (2, 4)]


def test_after_a_stopped_graphed_run_the_next_run_replays(settings, as_on_cuda):
    runtime = as_on_cuda("gpu")
    cache = ModelCache()
    unet = load_models(settings, runtime, cache).decoder.unet

    def stop() -> bool:
        return graphs_of(unet) is not None

    with pytest.raises(GenerationStopped):
        generate(settings, runtime=runtime, cache=cache, should_stop=stop)
    expected = generate(replace(settings, cuda_graphs=False), runtime=runtime, cache=ModelCache()).images[0]
    assert max_difference(generate(settings, runtime=runtime, cache=cache).images[0], expected) == 0
    assert graphs_of(unet).captures == 1


def test_graphs_are_forgotten_when_a_decoder_is_set_aside_or_released(settings, tiny_repos, as_on_cuda, caplog):
    runtime = as_on_cuda("prior_offload")
    cache = ModelCache()
    inpaint = replace(settings, mode="inpaint", model_name=str(tiny_repos.inpaint_decoder))
    inputs = Inputs(image=random_image(3), mask=left_half_mask())
    text2img_unet = load_models(settings, runtime, cache).decoder.unet
    first = generate(settings, runtime=runtime, cache=cache)
    assert first.metadata["cuda_graphs"] == ["decoder"]
    said = "infer_kandinsky_2_2: cuda_graphs: the prior stage runs without CUDA graphs: memory_mode prior_offload"
    assert [record.getMessage() for record in caplog.records if "cuda_graphs" in record.getMessage()] == [
        f"{said} moves its weights."
    ]
    assert graphs_of(text2img_unet).captures == 1
    assert graphs_of(load_models(settings, runtime, cache).prior.prior) is None
    generate(inpaint, inputs, runtime=runtime, cache=cache)
    # The text2img decoder was set aside: its weights moved, and its graphs went.
    assert graphs_of(text2img_unet) is None
    inpaint_unet = load_models(inpaint, runtime, cache).decoder.unet
    assert graphs_of(inpaint_unet).captures == 1
    again = generate(settings, runtime=runtime, cache=cache)
    assert graphs_of(text2img_unet).captures == 1
    # The copies hold the same bits, but on the CPU the kernels round by memory alignment: a decoder that came
    # back as a copy moves pixels by one level.
    assert max_difference(again.images[0], first.images[0]) <= 1
    cache.release("inpaint_decoder")
    assert graphs_of(inpaint_unet) is None and graphs_of(text2img_unet) is not None


def test_a_cpu_run_replays_no_graph(settings):
    cache = ModelCache()
    result = generate(settings, cache=cache)
    assert result.metadata["device"] == "cpu" and result.metadata["cuda_graphs"] == []
    assert graphs_of(load_models(settings, Runtime("cpu", torch.float32), cache).decoder.unet) is None


def test_a_replay_leaves_the_outputs_of_earlier_calls_as_they_were():
    graphed = graphs.GraphedForward(EagerCapture(), torch.device("cpu"))
    layer = torch.nn.Linear(3, 2)
    first = graphed(layer.forward, torch.ones(1, 3))
    kept = first.clone()
    second = graphed(layer.forward, torch.zeros(1, 3))
    assert torch.equal(first, kept) and torch.equal(second, layer(torch.zeros(1, 3)))
    assert graphed.captures == 1


def test_a_forward_that_cannot_be_captured_is_refused_with_the_way_out_and_nothing_is_lost(
    settings, as_on_cuda, monkeypatch
):
    runtime = as_on_cuda("gpu")

    class Refusing(EagerCapture):
        def __call__(self, run, pool, device):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors")

    monkeypatch.setattr(graphs, "CAPTURE", Refusing())
    cache = ModelCache()
    with pytest.raises(GraphCaptureFailed) as refused:
        generate(settings, runtime=runtime, cache=cache)
    message = str(refused.value)
    assert message.startswith("cuda_graphs: the PriorTransformer's forward pass could not be captured into a CUDA")
    assert message.endswith(
        "): RuntimeError: CUDA error: operation not permitted when stream is capturing. Set cuda_graphs to False to "
        "run without them."
    )
    prior = load_models(settings, runtime, cache).prior.prior
    assert graphs_of(prior).captures == 0
    eager = replace(settings, cuda_graphs=False)
    expected = generate(eager, runtime=runtime, cache=ModelCache()).images[0]
    assert max_difference(generate(eager, runtime=runtime, cache=cache).images[0], expected) == 0


def test_a_compiled_unet_is_said_to_replay_graphs_of_its_own(settings, as_on_cuda, monkeypatch, caplog):
    runtime = as_on_cuda("gpu", compile_unet="reduce-overhead")
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **options: None)
    assert generate(settings, runtime=runtime, cache=ModelCache()).metadata["cuda_graphs"] == ["prior"]
    said = [record.getMessage() for record in caplog.records if "cuda_graphs" in record.getMessage()]
    assert said == [
        "infer_kandinsky_2_2: cuda_graphs: the decoder stage runs without CUDA graphs: compile_unet reduce-overhead "
        "replays graphs of its own."
    ]
