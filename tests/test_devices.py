"""The GPU a run computes on (cuda_device) and the model caches per device, as far as the CPU can test them.

torch here sees no GPU: ``fake_gpus`` makes it report some (``torch.cuda.is_available`` and ``device_count``) for
choosing a runtime, and the caches of GPUs are filled by a stand-in loader; models load for real on the CPU and
on PyTorch's meta device, two devices of their own. That models run on the GPU they were placed on is left to a
machine with several GPUs.
"""

import json
import logging
import re
import threading
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import torch

from helpers import TASK_NAME, model_cache, workflow_with
from infer_kandinsky_2_2.kandinsky22_engine import devices, graphs, models
from infer_kandinsky_2_2.kandinsky22_engine.errors import SettingsError
from infer_kandinsky_2_2.kandinsky22_engine.generation import generate, load_models, runtime_for
from infer_kandinsky_2_2.kandinsky22_engine.models import Kept, ModelCache, ModelCaches, ModelKey, Parking
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime

TWO_GPUS_THIRD_ASKED = (
    "cuda_device: received '2'; accepted: a whole number from 0 to 1, as torch sees 2 GPUs, numbered from 0 (where "
    "CUDA_VISIBLE_DEVICES is set, torch sees the GPUs it lists, numbered from 0 in its order). Set cuda_device to one "
    "of them, or cuda to False to run on the CPU."
)


def key(device: str, model_name: str = "someone/prior") -> ModelKey:
    return ModelKey(model_name, device, torch.float32 if device == "cpu" else torch.float16, "gpu")


def stand_in(role: str, key: ModelKey) -> tuple[object, Kept]:
    """A ``Loader`` that loads nothing: a model to keep, kept whole."""
    return object(), Kept(Parking())


@pytest.mark.parametrize(
    ("count", "index", "message"),
    [
        (2, 2, TWO_GPUS_THIRD_ASKED),
        (
            1,
            5,
            "cuda_device: received '5'; accepted: 0, as torch sees 1 GPU, numbered from 0 (where CUDA_VISIBLE_DEVICES "
            "is set, torch sees the GPUs it lists, numbered from 0 in its order). Set cuda_device to one of them, or "
            "cuda to False to run on the CPU.",
        ),
    ],
)
def test_an_index_past_the_gpus_torch_sees_is_refused_naming_cuda_device_the_index_and_the_count(
    fake_gpus, count, index, message
):
    fake_gpus(count)
    with pytest.raises(SettingsError) as refused:
        runtime_for(Settings(cuda=True, cuda_device=index))
    assert str(refused.value) == message


def test_the_run_is_on_the_gpu_of_the_index_and_its_models_are_keyed_by_it(fake_gpus):
    fake_gpus(2)
    runtimes = [runtime_for(Settings(cuda=True, cuda_device=index)) for index in (0, 1)]
    assert [(runtime.device, runtime.dtype) for runtime in runtimes] == [
        ("cuda:0", torch.float16),
        ("cuda:1", torch.float16),
    ]
    assert [runtime.key("m").device for runtime in runtimes] == ["cuda:0", "cuda:1"]
    assert [runtime.decoder_key("m").device for runtime in runtimes] == ["cuda:0", "cuda:1"]
    assert runtimes[0].key("m") != runtimes[1].key("m")


def test_an_index_that_the_cpu_leaves_unused_is_said_not_refused(fake_gpus):
    fake_gpus(1)
    assert runtime_for(Settings(cuda=False)) == Runtime("cpu", torch.float32)
    assert runtime_for(Settings(cuda=False, cuda_device=7)) == Runtime(
        "cpu", torch.float32, note="cuda is False, so cuda_device 7 is not used"
    )
    fake_gpus(0)
    assert runtime_for(Settings(cuda=True)).note == "cuda was requested but CUDA is not available"
    absent = runtime_for(Settings(cuda=True, cuda_device=7))
    assert (absent.device, absent.note) == (
        "cpu",
        "cuda was requested but CUDA is not available, so cuda_device 7 is not used",
    )


def test_a_run_on_the_cpu_with_an_index_logs_that_it_is_not_used_and_keeps_it_in_the_metadata(tiny_strings, caplog):
    with caplog.at_level(logging.WARNING):
        result = generate(Settings.from_strings({**tiny_strings, "cuda": "False", "cuda_device": "1"}))
    assert (result.metadata["device"], result.metadata["device_note"]) == (
        "cpu",
        "cuda is False, so cuda_device 1 is not used",
    )
    assert "cuda is False, so cuda_device 1 is not used; running on the CPU in float32." in caplog.text


def test_a_refused_index_stops_the_run_before_any_model_work(tiny_strings, fake_gpus):
    class Untouchable(ModelCache):
        """A cache that notes every use: a run that got as far as the models would use it."""

        def __init__(self) -> None:
            super().__init__()
            self.uses = []

        def holds(self, role, key):
            self.uses.append(("holds", role))
            return super().holds(role, key)

        def get(self, role, key, load):
            self.uses.append(("get", role))
            return super().get(role, key, load)

        def set_aside(self, role):
            self.uses.append(("set_aside", role))

    fake_gpus(2)
    cache = Untouchable()
    settings = Settings.from_strings(
        {**tiny_strings, "cuda": "True", "cuda_device": "2", "memory_mode": "model_offload"}
    )
    with pytest.raises(SettingsError, match=f"^{re.escape(TWO_GPUS_THIRD_ASKED)}$"):
        generate(settings, cache=cache)
    assert cache.uses == []
    assert cache.load_counts == {}


def test_the_task_refuses_the_index_with_the_message_and_loads_nothing(tiny_strings, fake_gpus):
    workflow, task = workflow_with({**tiny_strings, "cuda": "True", "cuda_device": "2"})
    cpu = model_cache(task)
    loads = dict(cpu.load_counts)
    fake_gpus(2)
    with pytest.raises(RuntimeError, match=re.escape(TWO_GPUS_THIRD_ASKED)):
        workflow.run()
    assert cpu.load_counts == loads


def test_a_workflow_saved_before_cuda_device_existed_loads_and_runs_as_before(tiny_strings, tmp_path, fake_gpus):
    from ikomia.dataprocess.workflow import Workflow

    workflow, task = workflow_with(tiny_strings)
    workflow.run()
    expected = task.get_output(0).get_image()
    path = tmp_path / "workflow.json"
    workflow.save(str(path))
    saved = json.loads(path.read_text(encoding="utf-8"))
    for each in saved["tasks"]:
        each["task_data"]["parameters"] = [
            parameter for parameter in each["task_data"]["parameters"] if parameter["name"] != "cuda_device"
        ]
    path.write_text(json.dumps(saved), encoding="utf-8")
    older = Workflow()
    older.load(str(path))
    (loaded,) = older.find_task(TASK_NAME)
    assert loaded.get_parameters()["cuda_device"] == "0"
    older.run()
    assert np.array_equal(loaded.get_output(0).get_image(), expected)
    # Its parameters as Ikomia strings, without cuda_device: on CUDA, the first GPU, as before.
    values = {name: value for name, value in loaded.get_parameters().items() if name != "cuda_device"}
    fake_gpus(1)
    assert runtime_for(Settings.from_strings({**values, "cuda": "True"})).device == "cuda:0"


def test_each_gpu_has_a_cache_of_its_own_and_a_load_on_one_replaces_nothing_on_the_other():
    caches = ModelCaches()
    first, second = caches.for_device("cuda:0"), caches.for_device("cuda:1")
    assert caches.for_device("cuda:0") is first and first is not second and first.lock is not second.lock
    for cache, device in ((first, "cuda:0"), (second, "cuda:1")):
        cache.get("prior", key(device), stand_in)
        cache.get("decoder", key(device, "someone/decoder"), stand_in)
    second.get("prior", key("cuda:1", "someone/other-prior"), stand_in)
    assert first.loaded_keys() == {"prior": key("cuda:0"), "decoder": key("cuda:0", "someone/decoder")}
    assert second.loaded_keys() == {
        "prior": key("cuda:1", "someone/other-prior"),
        "decoder": key("cuda:1", "someone/decoder"),
    }
    assert (first.load_counts, second.load_counts) == ({"prior": 1, "decoder": 1}, {"prior": 2, "decoder": 1})


def test_the_cpu_and_the_gpus_do_not_both_keep_a_model_of_one_role():
    caches = ModelCaches()
    gpus = [caches.for_device(device) for device in ("cuda:0", "cuda:1")]
    cpu, meta = caches.for_device("cpu"), caches.for_device("meta")
    for gpu, device in zip(gpus, ("cuda:0", "cuda:1"), strict=True):
        gpu.get("prior", key(device), stand_in)
        gpu.get("decoder", key(device, "someone/decoder"), stand_in)
    meta.get("prior", key("meta"), stand_in)
    # cuda off: the CPU's prior replaces every GPU's; their decoders, which this run does not load, stay.
    cpu.get("prior", key("cpu"), stand_in)
    assert [set(gpu.loaded_keys()) for gpu in gpus] == [{"decoder"}, {"decoder"}]
    # cuda on again: a GPU's prior replaces the CPU's.
    gpus[0].get("prior", key("cuda:0"), stand_in)
    assert cpu.loaded_keys() == {}
    assert set(gpus[1].loaded_keys()) == {"decoder"}
    # The meta device's cache is one of its own, which no load elsewhere touches.
    assert meta.loaded_keys() == {"prior": key("meta")}


def test_a_run_on_one_gpu_waits_for_nothing_on_another_and_keeps_its_models_while_it_runs():
    caches = ModelCaches()
    busy, idle, cpu = (caches.for_device(device) for device in ("cuda:0", "cuda:1", "cpu"))
    busy.get("prior", key("cuda:0"), stand_in)
    idle.get("prior", key("cuda:1"), stand_in)
    running, finish = threading.Event(), threading.Event()

    def run() -> None:
        # What generate does for the whole of a run: it holds its device's cache.
        with busy.lock:
            running.set()
            finish.wait()

    runner = threading.Thread(target=run)
    runner.start()
    running.wait()
    elsewhere = threading.Thread(
        target=lambda: (
            idle.get("decoder", key("cuda:1", "someone/decoder"), stand_in),
            cpu.get("prior", key("cpu"), stand_in),
        )
    )
    elsewhere.start()
    # A bound, not a pause: loads that waited for the running cache would still be waiting.
    elsewhere.join(timeout=60)
    waited = elsewhere.is_alive()
    finish.set()
    runner.join()
    elsewhere.join()
    assert not waited
    assert busy.loaded_keys() == {"prior": key("cuda:0")}
    assert idle.loaded_keys() == {"decoder": key("cuda:1", "someone/decoder")}
    assert cpu.loaded_keys() == {"prior": key("cpu")}


def test_runs_on_two_devices_load_into_the_cache_of_each_and_keep_their_models(tiny_strings, monkeypatch):
    caches = ModelCaches()
    monkeypatch.setattr(models, "MODEL_CACHES", caches)
    settings = Settings.from_strings(tiny_strings)
    first = generate(settings).images[0]
    load_models(settings, Runtime("meta", torch.float32))
    cpu, meta = caches.for_device("cpu"), caches.for_device("meta")
    assert cpu.load_counts == meta.load_counts == {"prior": 1, "decoder": 1}
    assert {key.device for key in cpu.loaded_keys().values()} == {"cpu"}
    assert {key.device for key in meta.loaded_keys().values()} == {"meta"}
    assert np.array_equal(generate(settings).images[0], first)
    assert cpu.load_counts == {"prior": 1, "decoder": 1}


def test_the_gpu_synchronised_and_made_current_is_the_runs(monkeypatch):
    synchronised, made_current = [], []

    @contextmanager
    def current(device):
        made_current.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronised.append(device))
    monkeypatch.setattr(torch.cuda, "device", current)
    devices.synchronize("cuda:1")
    devices.synchronize("cpu")
    with devices.current("cuda:1"), devices.current("cpu"), devices.current("meta"):
        pass
    assert synchronised == ["cuda:1"]
    assert made_current == [torch.device("cuda:1")]


def test_a_run_makes_its_device_current_and_synchronises_it(tiny_strings, monkeypatch):
    from infer_kandinsky_2_2.kandinsky22_engine import generation

    made_current, synchronised = [], []

    @contextmanager
    def current(device):
        made_current.append(device)
        yield

    monkeypatch.setattr(generation.devices, "current", current)
    monkeypatch.setattr(generation.devices, "synchronize", synchronised.append)
    generate(Settings.from_strings(tiny_strings), runtime=Runtime("cpu", torch.float32))
    assert made_current == ["cpu"]
    assert synchronised and set(synchronised) == {"cpu"}


def test_a_cuda_graph_is_captured_on_streams_of_its_modules_gpu(monkeypatch):
    current = ["cuda:0"]  # the thread's current GPU, which is not the module's
    streams, captures = [], []

    class Stream:
        def __init__(self) -> None:
            self.device = current[0]
            streams.append(self)

        def wait_stream(self, other: "Stream") -> None:
            pass

    @contextmanager
    def on(device):
        before, current[0] = current[0], str(device)
        try:
            yield
        finally:
            current[0] = before

    @contextmanager
    def capture(graph, pool=None, stream=None, capture_error_mode="global"):
        captures.append((stream and stream.device, pool, capture_error_mode))
        yield

    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    passes = []
    graphs.CudaCapture()(lambda: passes.append(current[0]), "pool", torch.device("cuda:1"))
    assert passes == ["cuda:1"] * (graphs.WARMUP_PASSES + 1)
    assert captures == [("cuda:1", "pool", "thread_local")]
    assert {stream.device for stream in streams} == {"cuda:1"}
    assert current == ["cuda:0"]


def test_out_of_memory_on_one_device_drops_the_graphs_there_only():
    on_cpu, on_meta = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta")
    for module in (on_cpu, on_meta):
        graphs.forward(module, True)
    try:
        graphs.drop_on("cpu")
        assert graphs.graphs_of(on_cpu) is None
        assert graphs.graphs_of(on_meta) is not None
    finally:
        graphs.drop([on_cpu, on_meta])
