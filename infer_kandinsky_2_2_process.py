"""The Ikomia task infer_kandinsky_2_2: its parameters, the task and its factory.

A thin layer over the ``kandinsky22_engine`` package: Ikomia's string parameters become checked
``Settings``, the task's inputs become arrays, the engine generates, and the image and its metadata
become the task's outputs.

The inputs follow the mode: text2img has none (Ikomia runs a task with unconnected inputs only if
it has no inputs at all), img2img an image, inpaint an image, a mask drawing and a mask image,
outpaint an image, controlnet_depth a depth map (or, with ``depth_model`` set, the photo to estimate it from),
controlnet_img2img an image and a depth map (or the image alone, with ``depth_model``), mix ``mix_images``
images. The outputs are picture 1, the metadata, then pictures 2 and on when ``num_images`` asks for more.
Inputs and outputs are rebuilt whenever ``mode``, ``mix_images``, ``depth_model`` (between empty and set) or
``num_images`` changes, however the parameters are set.
"""

import ctypes
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from ikomia import core, dataprocess, utils
from ikomia.dataprocess.io import DataDictIO

from . import kandinsky22_engine
from .kandinsky22_engine.errors import SettingsError
from .kandinsky22_engine.generation import generate, load_models, progress_steps, runtime_for
from .kandinsky22_engine.inputs import Inputs, prepare_inputs
from .kandinsky22_engine.models import cache_for
from .kandinsky22_engine.modes import DEPTH_INPUT, DRAWING_INPUT, IMAGE_INPUT, MASK_INPUT, input_names
from .kandinsky22_engine.parameters import PARAMETERS, Settings, unknown_names
from .kandinsky22_engine.runtime import Runtime

PARAMETER = {parameter.name: parameter for parameter in PARAMETERS}

VERSION = "1.0.0"


class IkomiaLogHandler(logging.Handler):
    """Hands the engine's log records to Ikomia's logger, which shows them in Studio's log and its console and
    writes them to Ikomia's log.txt: the plan and progress of a model download, for example."""

    def emit(self, record: logging.LogRecord) -> None:
        # A handler that Python's root logger also has gets the record through propagation already.
        already = set(logging.getLogger().handlers)
        for handler in logging.getLogger("ikomia").handlers:
            if handler not in already and record.levelno >= handler.level:
                handler.handle(record)


def _log_to_ikomia() -> None:
    """Send the engine's records, from INFO up, to Ikomia's log too (they still reach Python's own handlers).

    Ikomia may import this module again when it reloads plugins: the handler is replaced, never added twice.
    """
    engine_logger = logging.getLogger(kandinsky22_engine.__name__)
    engine_logger.setLevel(logging.INFO)
    for handler in list(engine_logger.handlers):
        if type(handler).__name__ == IkomiaLogHandler.__name__:
            engine_logger.removeHandler(handler)
    engine_logger.addHandler(IkomiaLogHandler())


_log_to_ikomia()


class InferKandinsky22Param(core.CWorkflowTaskParam):
    """The task's parameters as Ikomia keeps them: one string per parameter of ``Settings``.

    Values are kept exactly as given and checked when the task runs, so a wrong value is
    reported with its name and what is accepted, and is never silently changed. ``last_seed`` is
    the seed of the task's last run, which the widget offers to reuse.
    """

    def __init__(self) -> None:
        core.CWorkflowTaskParam.__init__(self)
        self.values = Settings().to_strings()
        self.last_seed: int | None = None
        self.values_changed: Callable[[], None] = lambda: None

    def set_values(self, params: dict) -> None:
        self.values.update({name: str(value) for name, value in params.items()})
        self.values_changed()

    def get_values(self) -> dict:
        return dict(self.values)

    def settings(self) -> Settings:
        """The checked settings; raises ``SettingsError`` naming every refused value."""
        return Settings.from_strings(self.values)


class InferKandinsky22(dataprocess.CWorkflowTask):
    """Generates images with Kandinsky 2.2. Output 0: picture 1; output 1: the run's metadata; outputs 2 and on:
    pictures 2 and on."""

    def __init__(self, name: str, param: InferKandinsky22Param | None) -> None:
        dataprocess.CWorkflowTask.__init__(self, name)
        self.add_output(dataprocess.CImageIO())
        self.add_output(DataDictIO())
        parameters = InferKandinsky22Param()
        if param is not None:
            parameters.set_values(param.get_values())
        self.set_param_object(parameters)
        self._stop_requested = threading.Event()
        self._seconds_loading = 0.0
        # The runtime of the run in progress, chosen once when it starts; None between runs.
        self._runtime: Runtime | None = None
        self._input_names: tuple[str, ...] = ()
        self._update_io()
        parameters.values_changed = _call_while_alive(weakref.WeakMethod(self._update_io))

    def _update_io(self) -> None:
        """Offer the inputs of the current mode and one image output per picture.

        Values that do not parse leave the inputs and outputs as they are; the run reports them.
        """
        values = self.get_param_object().values
        try:
            mode = PARAMETER["mode"].parse(values["mode"])
            mix_images = PARAMETER["mix_images"].parse(values["mix_images"])
            names = input_names(mode, mix_images, PARAMETER["depth_model"].parse(values["depth_model"]))
            pictures = PARAMETER["num_images"].parse(values["num_images"])
        except SettingsError:
            return
        if names != self._input_names:
            self.clear_inputs()
            for name in names:
                if name == DRAWING_INPUT:
                    self.add_input(dataprocess.CGraphicsInput(name))
                else:
                    self.add_input(dataprocess.CImageIO(core.IODataType.IMAGE, name))
            self._input_names = names
        # Output 0: picture 1; output 1: the metadata; outputs 2 and on: pictures 2 and on.
        while self.get_output_count() > max(pictures + 1, 2):
            self.remove_output(self.get_output_count() - 1)
        while self.get_output_count() < pictures + 1:
            self.add_output(dataprocess.CImageIO())

    def _picture_outputs(self) -> list:
        return [self.get_output(0), *(self.get_output(index) for index in range(2, self.get_output_count()))]

    def _read_inputs(self, settings: Settings) -> Inputs:
        """The arrays of the inputs, read afresh at every run (a mask from an earlier run is never reused)."""
        arrays = {}
        for index, name in enumerate(self._input_names):
            source = self.get_input(index)
            if name != DRAWING_INPUT and source is not None and source.is_data_available():
                arrays[name] = source.get_image()
        drawn_mask = None
        if DRAWING_INPUT in self._input_names and IMAGE_INPUT in arrays:
            graphics = self.get_input(self._input_names.index(DRAWING_INPUT))
            if graphics.is_data_available():
                rows, columns = arrays[IMAGE_INPUT].shape[:2]
                drawn_mask = rasterize(graphics, rows, columns)
        return Inputs(
            image=arrays.get(IMAGE_INPUT),
            mask=arrays.get(MASK_INPUT),
            drawn_mask=drawn_mask,
            depth=arrays.get(DEPTH_INPUT),
            mix_images=tuple(arrays.get(name) for name in input_names("mix", settings.mix_images))
            if settings.mode == "mix"
            else (),
        )

    def set_parameters(self, params: dict) -> None:
        """Set parameters from Python; an unknown name is refused here, where Ikomia would drop it silently.

        Ikomia stores strings, and its own ``set_parameters`` fails on anything else (Boost.Python's "No
        registered converter"): a number or a boolean is taken as its string, ``{"num_images": 2}`` as
        ``{"num_images": "2"}``, and checked with the others when the task runs.
        """
        problems = unknown_names(params)
        if problems:
            raise SettingsError("\n".join(problems))
        as_strings = {name: value if isinstance(value, str) else str(value) for name, value in params.items()}
        dataprocess.CWorkflowTask.set_parameters(self, as_strings)

    def get_progress_steps(self) -> int:
        try:
            return progress_steps(self.get_param_object().settings())
        except ValueError:
            return 1

    def init_long_process(self) -> None:
        """Load the models now, so that the first run does not wait for them.

        Ikomia also calls this from the first run's ``begin_task_run``: the time it takes is kept, so that
        this run's metadata counts it as loading, and the models load for that run's runtime, into the cache of its
        device.
        """
        started = time.perf_counter()
        settings = self.get_param_object().settings()
        runtime = self._runtime or runtime_for(settings)
        load_models(settings, runtime, cache_for(runtime.device))
        self._seconds_loading += time.perf_counter() - started
        dataprocess.CWorkflowTask.init_long_process(self)

    def stop(self) -> None:
        dataprocess.CWorkflowTask.stop(self)
        self._stop_requested.set()

    def run(self) -> None:
        self._stop_requested.clear()
        for output in self.get_outputs():
            output.clear_data()
        settings = self.get_param_object().settings()
        runtime = runtime_for(settings)
        # Checked before Ikomia's own check of the inputs, whose message does not say which input is empty.
        prepared = prepare_inputs(settings, self._read_inputs(settings), runtime)
        self._seconds_loading = 0.0
        self._runtime = runtime
        load_before = os.getloadavg()[2]
        try:
            self.begin_task_run()
            with openmp_teams_as_on_the_main_thread():
                result = generate(
                    settings,
                    prepared,
                    runtime=runtime,
                    cache=cache_for(runtime.device),
                    on_step=self.emit_step_progress,
                    should_stop=self._stop_requested.is_set,
                    seconds_loading_before=self._seconds_loading,
                )
        finally:
            self._runtime = None
        for output, image in zip(self._picture_outputs(), result.images, strict=True):
            output.set_image(image)
        metadata = result.metadata
        if metadata["device"] == "cpu":
            metadata = {**metadata, "cpu_threads": cpu_threads(load_before)}
        self.get_output(1).data = metadata
        self.get_param_object().last_seed = result.metadata["seed"]
        self.end_task_run()


def _gnu_openmp() -> ctypes.CDLL | None:
    """GNU OpenMP (libgomp) if this process has loaded it already, else None; never loads it."""
    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:
        return None
    try:
        return ctypes.CDLL("libgomp.so.1", mode=no_load | os.RTLD_LAZY)
    except OSError:
        return None


@contextmanager
def openmp_teams_as_on_the_main_thread() -> Iterator[None]:
    """Let OpenMP size this thread's teams as it does on the main thread while the block runs; the thread's
    own setting is put back after.

    ikomia's OpenCV turns on OpenMP's dynamic adjustment of team sizes (``omp_set_dynamic(1)``) when it loads,
    and GNU libgomp keeps that setting per thread: only the thread that loaded OpenCV, the main thread, has it.
    With it, libgomp gives a team the cores that the 15-minute load average leaves free (one at least).
    Studio runs tasks in other threads, where torch's teams took every core whatever the load and their
    threads spun waiting for each other at every barrier: on cores kept busy by other processes, a run from
    such a thread took several times as long as the same run from the main thread (BENCHMARKS.md, runs from a
    worker thread). The price is the main thread's: on idle cores after heavy use, the 15-minute average keeps
    teams small (1.3x slower measured on 2 cores). Where libgomp is not loaded, torch uses another OpenMP and
    nothing changes.
    """
    runtime = _gnu_openmp()
    if runtime is None:
        yield
        return
    before = runtime.omp_get_dynamic()
    runtime.omp_set_dynamic(1)
    try:
        yield
    finally:
        runtime.omp_set_dynamic(before)


def cpu_threads(load_before: float) -> dict:
    """What sets the size of a CPU run's thread teams, for the metadata: torch's threads, whether OpenMP's teams
    follow the load (GNU libgomp's dynamic teams, which ``openmp_teams_as_on_the_main_thread`` turns on), and the
    15-minute load average they follow (libgomp gives a team the threads less that load, one at least, at every
    parallel region), ``load_before`` the run and now, after it.

    Pixels repeat exactly for the same seed and team size; a team of another size moves some by a grey level
    (README, "Limits and errors"), which is why a run says what set its teams.
    """
    return {
        "threads": torch.get_num_threads(),
        "teams_follow_load": _gnu_openmp() is not None,
        "load_average_15min": {"start": round(load_before, 2), "end": round(os.getloadavg()[2], 2)},
    }


def _call_while_alive(method: weakref.WeakMethod) -> Callable[[], None]:
    """Call a task's method while the task exists: its parameters must not keep it alive."""

    def call() -> None:
        bound = method()
        if bound is not None:
            bound()

    return call


def rasterize(graphics: dataprocess.CGraphicsInput, rows: int, columns: int) -> np.ndarray:
    """The graphics drawn over an image as a uint8 mask of its size, white inside the shapes.

    Ikomia draws the mask; a new helper task each time means no mask of an earlier run can be returned.
    """
    painter = dataprocess.C2dImageTask("infer_kandinsky_2_2_mask", False)
    painter.create_graphics_mask(columns, rows, graphics)
    return painter.get_graphics_mask(0)


class InferKandinsky22Factory(dataprocess.CTaskFactory):
    """Describes the task to Ikomia Studio and Ikomia HUB, and builds it."""

    def __init__(self) -> None:
        dataprocess.CTaskFactory.__init__(self)
        info = self.info
        info.name = "infer_kandinsky_2_2"
        info.short_description = (
            "Kandinsky 2.2 text-to-image, image-to-image, inpainting, ControlNet depth and image mixing in one task."
        )
        info.description = (
            "Kandinsky 2.2 turns a prompt into an image in two stages: a prior (CLIP text encoder and prior "
            "transformer) predicts a CLIP image embedding, and a decoder (UNet and MoVQ) paints the image from it. "
            "This task runs every Kandinsky 2.2 mode through Hugging Face diffusers: text2img, img2img, inpaint "
            "(mask drawn in Studio or given as an image), controlnet_depth (from any depth task, or from a photo "
            "through a transformers depth-estimation model) and mix (images "
            "and the prompt blended with weights). One prior serves every mode; models load once per process and "
            "are shared by every task; the same seed gives the same pixels as diffusers' own pipelines; progress "
            "shows per denoising step and Stop ends a run after the current step."
        )
        info.path = "Plugins/Python/Diffusion"
        info.version = VERSION
        info.icon_path = "images/icon.png"
        info.authors = (
            "Anton Razzhigaev, Arseniy Shakhmatov, Anastasia Maltseva, Vladimir Arkhipkin, Igor Pavlov, "
            "Ilya Ryabov, Angelina Kuts, Alexander Panchenko, Andrey Kuznetsov, Denis Dimitrov"
        )
        info.article = "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent Diffusion"
        info.article_url = "https://arxiv.org/abs/2310.03502"
        info.journal = "EMNLP 2023 System Demonstrations"
        info.year = 2023
        info.license = "Apache 2.0 License"
        info.documentation_link = "https://huggingface.co/docs/diffusers/api/pipelines/kandinsky_v22"
        info.repository = "https://github.com/Ikomia-hub/infer_kandinsky_2_2"
        info.original_repository = "https://github.com/ai-forever/Kandinsky-2"
        info.keywords = (
            "Kandinsky,Kandinsky 2.2,diffusion,latent diffusion,text-to-image,image-to-image,inpainting,"
            "ControlNet,depth,image mixing,generative,diffusers"
        )
        info.algo_type = core.AlgoType.INFER
        info.algo_tasks = "IMAGE_GENERATION"
        info.min_ikomia_version = "0.16.0"
        info.min_python_version = "3.10.0"
        info.os = utils.OSType.ALL
        info.hardware_config.min_cpu = 4
        # Whole GB, rounded up from BENCHMARKS.md's measurements: RAM, a default run on the CPU (16.29 GB);
        # GPU memory, model_offload's peak at the default size (3.50 GB allocated).
        info.hardware_config.min_ram = 17
        info.hardware_config.gpu_required = False
        info.hardware_config.min_vram = 4

    def create(self, param: InferKandinsky22Param | None = None) -> InferKandinsky22:
        return InferKandinsky22(self.info.name, param)


class InferKandinsky22ParamFactory(dataprocess.CTaskParamFactory):
    """Builds the task's default parameters (Ikomia asks for them by name)."""

    def __init__(self) -> None:
        dataprocess.CTaskParamFactory.__init__(self)
        self.name = "infer_kandinsky_2_2"

    def create(self) -> InferKandinsky22Param:
        return InferKandinsky22Param()
