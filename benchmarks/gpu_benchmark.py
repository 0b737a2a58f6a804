"""Time and measure the engine against plain diffusers on full-size Kandinsky 2.2 architectures.

Builds the published models' architectures with random (seeded, so identical) weights directly on the
device (speed and memory depend on the sizes, not the weights), then, on one card in one run: plain
diffusers (``KandinskyV22CombinedPipeline``, every model on the device), the engine in each memory
mode, a batch, text2img and inpaint in turn, the UNet compiled (CUDA only), and levers not in the engine (bfloat16,
channels_last, cuDNN's benchmark mode, attention without PyTorch's fused kernel, another model-offload
order). Each case is
timed over warm runs, with its first run, its peak memory, and how far its picture is from
diffusers' picture. The FLOP floor comes from
``benchmarks/flops.py`` and the card's matrix-product speed measured here. Needs no Ikomia.

The report is rewritten after every case, and a case that fails is recorded with its error, so a
run cut short still says what it measured. Cases start only while ``--budget`` seconds are not spent.

GPU:  python benchmarks/gpu_benchmark.py --output results/
CPU check of the whole script on tiny models:
      python benchmarks/gpu_benchmark.py --device cpu --size tiny --height 256 --width 256 --output results/
"""

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffusers
import transformers
from diffusers import DiffusionPipeline
from diffusers.hooks import apply_group_offloading
from diffusers.pipelines.kandinsky2_2 import pipeline_kandinsky2_2_inpainting as inpainting
from flops import count_flops

from kandinsky22_devkit.reference import combine, combined_arguments
from kandinsky22_devkit.tiny import FULL, TINY, build_decoder_pipeline, build_prior_pipeline, write_tokenizer
from kandinsky22_engine.generation import generate, runtime_for, to_uint8
from kandinsky22_engine.inputs import Inputs
from kandinsky22_engine.models import ModelCache, Parking
from kandinsky22_engine.parameters import Settings
from kandinsky22_engine.stages import kept_latents

PROMPT = "portrait of a young women, blue eyes, cinematic"
PLACED = ("gpu", "prior_offload")  # the memory modes whose decoder stays on the device
NEGATIVE = "low quality, bad quality"


class Bench:
    """The run's fixed inputs, the report it fills, and diffusers' picture that every case is compared to."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        self.device = arguments.device
        self.architecture = FULL if arguments.size == "full" else TINY
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.repeats = arguments.repeats
        self.num_images = arguments.num_images
        self.deadline = time.perf_counter() + arguments.budget
        self.path = arguments.output / "gpu_benchmark.json"
        self.only = set(arguments.only or ())
        self.tokenizer = write_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
        self.settings = Settings(
            model_name="benchmark/decoder",
            prior_model_name="benchmark/prior",
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            prior_num_inference_steps=arguments.prior_steps,
            num_inference_steps=arguments.steps,
            height=arguments.height,
            width=arguments.width,
            seed=42,
            cuda=self.device == "cuda",
        )
        self.reference: np.ndarray | None = None
        self.report: dict = {
            "device": torch.cuda.get_device_name() if self.device == "cuda" else platform.machine(),
            "size": arguments.size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "versions": {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "run": {
                key: getattr(self.settings, key)
                for key in ("height", "width", "num_inference_steps", "prior_num_inference_steps", "guidance_scale")
            },
            "cases": {},
        }

    def case(self, name: str, measure: Callable[[], dict]) -> None:
        """Run one case unless it is not asked for or the budget is spent; record its result or error, save."""
        if self.only and name not in self.only and name != "diffusers":
            return
        if time.perf_counter() > self.deadline:
            self.report["cases"][name] = {"skipped": "the time budget was spent"}
        else:
            print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
            try:
                self.report["cases"][name] = measure()
            except Exception as error:
                self.report["cases"][name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                traceback.print_exc()
        free(self.device)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.report, indent=2), encoding="utf-8")

    def build(self, dtype: torch.dtype | None = None) -> tuple:
        """A fresh prior and decoder with random weights (the same for every build), on the device in ``dtype``."""
        with self.building(dtype):
            return build_prior_pipeline(self.architecture, self.tokenizer), build_decoder_pipeline(self.architecture)

    def build_decoder(self, repo: str) -> DiffusionPipeline:
        """The decoder of another published repo (say "decoder-inpaint"), built as ``build`` builds."""
        with self.building():
            return build_decoder_pipeline(self.architecture, repo)

    @contextmanager
    def building(self, dtype: torch.dtype | None = None) -> Iterator[None]:
        """New tensors made on the device in ``dtype`` (the run's by default) for the block."""
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype or self.dtype)
        try:
            with torch.device(self.device):
                yield
        finally:
            torch.set_default_dtype(default_dtype)

    def compare(self, picture: np.ndarray) -> dict:
        """How far ``picture`` is from diffusers' picture, in levels of 0-255."""
        if self.reference is None:
            return {}
        difference = np.abs(picture.astype(np.int16) - self.reference.astype(np.int16))
        return {
            "max_abs_diff_vs_diffusers": int(difference.max()),
            "mean_abs_diff_vs_diffusers": float(difference.mean()),
        }

    def diffusers(self) -> dict:
        """Plain diffusers: the combined pipeline over the same models, every model on the device."""
        prior, decoder = self.build()
        combined = combine(prior, decoder)
        settings = self.settings

        def run() -> np.ndarray:
            output = combined(**combined_arguments(settings), output_type="np")
            return to_uint8(output.images[0])

        result, picture = timed(run, self.device, self.repeats)
        self.reference = picture
        return {**result, "picture_std": float(picture.std())}

    def engine(
        self,
        repeats: int,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        cudnn_benchmark: bool = False,
        classic_attention: bool = False,
        compile_prior: str = "",
        model_offload_order: str = "",
        inputs: Inputs = Inputs(),
        **changes,
    ) -> dict:
        """The engine with ``changes`` to the settings and ``inputs``, over freshly built models, with the levers
        asked for. A text2img picture is compared with diffusers'.

        ``classic_attention``: the UNet and the prior with diffusers' attention in plain matrix products
        instead of its default, PyTorch's scaled-dot-product attention: what the default is worth.
        ``compile_prior``: a torch.compile mode for the prior transformer, which the engine never compiles.
        ``model_offload_order``: the prior's model offload order instead of diffusers'
        "text_encoder->image_encoder->prior".
        """
        settings = replace(self.settings, **changes)
        prior, decoder = self.build(dtype)
        if channels_last:
            decoder.unet.to(memory_format=torch.channels_last)
            decoder.movq.to(memory_format=torch.channels_last)
        if classic_attention:
            decoder.unet.set_default_attn_processor()
            prior.prior.set_default_attn_processor()
        if compile_prior:
            prior.prior.compile(mode=compile_prior)
        if model_offload_order:
            prior.model_cpu_offload_seq = model_offload_order
        # The offload modes move the MoVQ to the device inside its decode: there the decode is not timed apart.
        decodes = time_calls(decoder.movq, "decode", self.device) if settings.memory_mode in PLACED else None
        started = time.perf_counter()
        cache = adopted(settings, prior, decoder)
        synchronize(self.device)
        placed = time.perf_counter() - started
        del prior, decoder
        stages = []

        graphed = []

        def run() -> np.ndarray:
            generation = generate(settings, inputs, cache=cache)
            graphed[:] = generation.metadata["cuda_graphs"]
            stages.append(dict(generation.metadata["seconds"]))
            if decodes is not None:
                stages[-1]["movq_decode"] = sum(decodes)
                decodes.clear()
            return generation.images[0]

        torch.backends.cudnn.benchmark = cudnn_benchmark
        try:
            result, picture = timed(run, self.device, repeats)
        finally:
            torch.backends.cudnn.benchmark = False
            cache.release()
        timed_stages = stages[-repeats:]
        medians = {stage: statistics.median(run[stage] for run in timed_stages) for stage in timed_stages[0]}
        result = {**result, "place_s": placed, "mode": settings.mode, "stages_median_s": medians}
        if settings.cuda_graphs:
            result["graphed"] = list(graphed)
        if settings.num_images == 1:
            comparable = settings.mode == "text2img" and settings.scheduler == "default"
            result.update(self.compare(picture) if comparable else {})
        else:
            result.update(num_images=settings.num_images, per_image_s=result["median_s"] / settings.num_images)
        return result

    def switching(self, memory_mode: str) -> dict:
        """text2img and inpaint in turn on one cache, as a workflow of the two runs: the time per run of each
        and the peak memory, with both decoders on the device (gpu) or one at a time (prior_offload).

        Two untimed runs first: text2img, which sets the inpaint decoder aside, then inpaint, which sets the
        text2img decoder aside (each packs a decoder into pinned memory once; the second is the case's
        "first run"); then ``repeats`` timed runs of each, in turn.
        """
        text2img = replace(self.settings, memory_mode=memory_mode)
        inpaint = replace(text2img, mode="inpaint", model_name="benchmark/inpaint")
        prior, decoder = self.build()
        inpaint_decoder = self.build_decoder("decoder-inpaint")
        cache = adopted(text2img, prior, decoder)
        cache.adopt("inpaint_decoder", runtime_for(inpaint).decoder_key(inpaint.model_name), inpaint_decoder)
        del prior, decoder, inpaint_decoder
        size = (self.settings.height, self.settings.width)
        mask = np.zeros(size, dtype=np.uint8)
        mask[:, : size[1] // 2] = 255
        picture = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        turns = itertools.cycle(((text2img, Inputs()), (inpaint, Inputs(image=picture, mask=mask))))
        seconds: dict[str, list[float]] = {"text2img": [], "inpaint": []}

        def run() -> np.ndarray:
            settings, inputs = next(turns)
            started = time.perf_counter()
            picture = generate(settings, inputs, cache=cache).images[0]
            synchronize(self.device)
            seconds[settings.mode].append(time.perf_counter() - started)
            return picture

        try:
            run()
            result, _ = timed(run, self.device, 2 * self.repeats)
        finally:
            cache.release()
        return {**result, **{f"{mode}_median_s": statistics.median(each[1:]) for mode, each in seconds.items()}}

    def switches(self, **changes) -> dict:
        """One cache of models, with ``changes`` to the settings (a compile mode, CUDA graphs), through runs that
        change the UNet's inputs: what each first run costs.

        A batch, classifier-free guidance (which doubles the UNet's batch) and img2img after text2img:
        each first run may recompile or capture; the warm run after it shows whether the speed holds.
        """
        base = replace(self.settings, **changes)
        cache = adopted(base, *self.build())
        picture = np.random.default_rng(0).integers(0, 256, (base.height, base.width, 3), dtype=np.uint8)
        steps = (
            ("text2img", {}, Inputs()),
            (f"batch_{self.num_images}", {"num_images": self.num_images}, Inputs()),
            ("guidance_4", {"guidance_scale": 4.0}, Inputs()),
            ("img2img", {"mode": "img2img", "strength": 0.5}, Inputs(image=picture)),
        )
        results = {}
        try:
            for name, changes, inputs in steps:
                settings = replace(base, **changes)
                seconds = []
                for _ in range(2):
                    started = time.perf_counter()
                    generate(settings, inputs, cache=cache)
                    synchronize(self.device)
                    seconds.append(time.perf_counter() - started)
                results[name] = {"first_run_s": seconds[0], "warm_run_s": seconds[1]}
        finally:
            cache.release()
        return results

    def visits(self) -> dict:
        """A model kept in CPU memory that visits the device, three ways: the engine's ``Parking`` (the weights
        packed in pinned buffers, copied in, nothing copied back), a plain ``.to()`` there and back (pageable
        memory), and, on CUDA, diffusers' group offloading (``apply_group_offloading``, block level, with a CUDA
        stream that copies the next block during the current one's forward). What is timed, each over warm runs:

        - ``text_encoder_*``: one forward of the prior's text encoder on the prompt, the encoder visiting for it
          (what prior_offload does to it at every run);
        - ``decoder_back_*``: a decoder's UNet and MoVQ brought back to the device and sent away again, with no
          forward (what setting a decoder aside costs, per switch of mode).

        Each result's ``peak_memory_gb`` is the device's peak during the warm runs, ``resident_gb`` what was
        allocated before them.
        """
        prompt = self.tokenizer(PROMPT, padding="max_length", return_tensors="pt").input_ids.to(self.device)
        ways = {
            "text_encoder_parking": lambda: self._parked(self._text_encoder(), prompt),
            "text_encoder_to": lambda: self._moved(self._text_encoder(), prompt),
            "decoder_back_parking": lambda: self._parked(self._decoder_models()),
            "decoder_back_to": lambda: self._moved(self._decoder_models()),
        }
        if self.device == "cuda":
            # diffusers' group offloading needs an accelerator (0.40 fails without one).
            ways["text_encoder_group_offload_streams"] = lambda: self._grouped(self._text_encoder(), prompt)
        results = {}
        for name, make in ways.items():
            run = make()
            gc.collect()
            resident = torch.cuda.memory_allocated() / 1e9 if self.device == "cuda" else 0.0
            result, _ = timed(run, self.device, self.repeats)
            results[name] = {**result, "resident_gb": resident}
            del run
        return results

    def prepare_mask(self) -> dict:
        """diffusers' inpainting ``prepare_mask`` on the device, once per inpaint run: it reads the latent-size
        mask pixel by pixel on the host (each read waits for the GPU) and clears up to six neighbours of each
        kept pixel one write at a time. Timed on a mask that keeps the left half, at the run's size."""
        height, width = self.settings.height // 8, self.settings.width // 8
        mask = torch.zeros(1, 1, height, width, device=self.device, dtype=self.dtype)
        mask[..., width // 2 :] = 1

        def run() -> np.ndarray:
            inpainting.prepare_mask(mask.clone())
            return np.zeros(1)

        result, _ = timed(run, self.device, self.repeats)
        return {**result, "latent_pixels": height * width}

    def kept_latents(self) -> dict:
        """What the engine runs in place of ``prepare_mask`` (the case above), once per inpaint run:
        ``stages.kept_latents``, the same mask computed with a few tensor operations, from the run's-size mask
        that repaints the left half."""
        mask = np.zeros((self.settings.height, self.settings.width), np.float32)
        mask[:, : self.settings.width // 2] = 1
        size = (self.settings.height // 8, self.settings.width // 8)

        def run() -> np.ndarray:
            kept_latents(mask, size, self.device, self.dtype)
            return np.zeros(1)

        result, _ = timed(run, self.device, self.repeats)
        return {**result, "latent_pixels": size[0] * size[1]}

    def _text_encoder(self) -> dict[str, torch.nn.Module]:
        with self.building():
            return {"text_encoder": build_prior_pipeline(self.architecture, self.tokenizer).text_encoder}

    def _decoder_models(self) -> dict[str, torch.nn.Module]:
        decoder = self.build_decoder("decoder")
        return {"unet": decoder.unet, "movq": decoder.movq}

    def _parked(
        self, models: dict[str, torch.nn.Module], prompt: torch.Tensor | None = None
    ) -> Callable[[], np.ndarray]:
        """A visit through ``Parking``: a forward of the text encoder on ``prompt``, or the copy alone."""
        parking = Parking(models, self.device)

        def run() -> np.ndarray:
            with parking.visit(*models):
                if prompt is not None:
                    models["text_encoder"](prompt)
                synchronize(self.device)
            return np.zeros(1)

        return run

    def _moved(
        self, models: dict[str, torch.nn.Module], prompt: torch.Tensor | None = None
    ) -> Callable[[], np.ndarray]:
        """A visit by ``.to()``: to the device, a forward on ``prompt`` (or none), and back to the CPU."""
        for module in models.values():
            module.to("cpu")

        def run() -> np.ndarray:
            for module in models.values():
                module.to(self.device)
            if prompt is not None:
                models["text_encoder"](prompt)
            for module in models.values():
                module.to("cpu")
            return np.zeros(1)

        return run

    def _grouped(self, models: dict[str, torch.nn.Module], prompt: torch.Tensor) -> Callable[[], np.ndarray]:
        """A forward of the text encoder on ``prompt`` under diffusers' group offloading, one block per group, the
        next block copied on a CUDA stream during the current one's forward."""
        encoder = models["text_encoder"].to("cpu")
        apply_group_offloading(
            encoder, self.device, offload_type="block_level", num_blocks_per_group=1, use_stream=True
        )

        def run() -> np.ndarray:
            encoder(prompt)
            return np.zeros(1)

        return run


def adopted(settings: Settings, prior: DiffusionPipeline, decoder: DiffusionPipeline) -> ModelCache:
    """A cache holding ``prior`` and ``decoder`` as if loaded for ``settings``, placed as they say."""
    runtime = runtime_for(settings)
    cache = ModelCache()
    cache.adopt("prior", runtime.key(settings.prior_model_name), prior)
    cache.adopt("decoder", runtime.decoder_key(settings.model_name), decoder)
    return cache


def time_calls(module: torch.nn.Module, method: str, device: str) -> list[float]:
    """Time every call of ``module``'s ``method`` from the moment the device is idle until it is idle again.

    Returns the list the seconds go to. Here for the MoVQ's ``decode``, so that the decoder stage's time
    splits into the UNet's steps and the decode to pixels, each with its own FLOP floor.
    """
    seconds: list[float] = []
    original = getattr(module, method)

    def timed_call(*arguments, **keywords):
        synchronize(device)
        started = time.perf_counter()
        result = original(*arguments, **keywords)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        return result

    setattr(module, method, timed_call)
    return seconds


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def timed(function: Callable[[], np.ndarray], device: str, repeats: int) -> tuple[dict, np.ndarray]:
    """Median and spread of ``repeats`` warm runs after a first one, the device's peak memory, the last picture."""
    started = time.perf_counter()
    function()
    synchronize(device)
    first = time.perf_counter() - started
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        picture = function()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    result = {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs": repeats,
        "first_run_s": first,
    }
    if device == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    return result, picture


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """The device's speed on large matrix products of random numbers in ``dtype``, measured."""
    size = 8192 if device == "cuda" else 1024
    first, second = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    result, _ = timed(lambda: first @ second, device, 10)
    return 2 * size**3 / result["median_s"] / 1e12


def host_to_device_gbps(pinned: bool) -> float:
    """Copy speed of 1 GB from CPU memory (pinned or pageable) to the GPU, measured."""
    host = torch.empty(2**29, dtype=torch.float16)
    host = host.pin_memory() if pinned else host
    result, _ = timed(lambda: host.to("cuda", non_blocking=pinned), "cuda", 5)
    return host.numel() * host.element_size() / result["median_s"] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the main cases, after a first run")
    parser.add_argument("--num-images", type=int, default=4, help="batch size of the throughput measurement")
    parser.add_argument("--budget", type=float, default=450, help="seconds after which no new case starts")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="run only these cases (diffusers always runs)")
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    arguments.output.mkdir(parents=True, exist_ok=True)
    bench = Bench(arguments)
    report, settings, device = bench.report, bench.settings, bench.device

    flops = count_flops(
        bench.architecture,
        settings.height,
        settings.width,
        settings.num_inference_steps,
        settings.prior_num_inference_steps,
        settings.guidance_scale,
    )
    report["flops_tera"] = {name: value / 1e12 for name, value in flops.items()}
    dtypes = (bench.dtype, torch.bfloat16) if device == "cuda" else (bench.dtype,)
    report["matmul_tflops_measured"] = {
        str(dtype).removeprefix("torch."): matmul_tflops(device, dtype) for dtype in dtypes
    }
    report["flop_floor_s"] = sum(flops.values()) / 1e12 / report["matmul_tflops_measured"][report["dtype"]]
    if device == "cuda":
        report["host_to_device_gbps"] = {
            "pinned": host_to_device_gbps(pinned=True),
            "pageable": host_to_device_gbps(pinned=False),
        }
    bench.save()

    few = max(1, bench.repeats - 1)
    bench.case("diffusers", bench.diffusers)
    bench.case("gpu", lambda: bench.engine(bench.repeats, memory_mode="gpu"))
    bench.case("gpu_batch", lambda: bench.engine(few, memory_mode="gpu", num_images=bench.num_images))
    # CUDA graphs (cuda_graphs): the prior and the UNet replayed in gpu, the UNet in prior_offload; the first run
    # captures, and each first run at a new batch, guidance or mode captures again (cuda_graphs_switches).
    bench.case("gpu_cuda_graphs", lambda: bench.engine(bench.repeats, memory_mode="gpu", cuda_graphs=True))
    bench.case("cuda_graphs_switches", lambda: bench.switches(cuda_graphs=True))
    bench.case(
        "gpu_batch_cuda_graphs",
        lambda: bench.engine(few, memory_mode="gpu", num_images=bench.num_images, cuda_graphs=True),
    )
    if device == "cuda":
        bench.case(
            "prior_offload_cuda_graphs",
            lambda: bench.engine(bench.repeats, memory_mode="prior_offload", cuda_graphs=True),
        )
    bench.case("visits", bench.visits)
    bench.case("inpaint_prepare_mask", bench.prepare_mask)
    bench.case("inpaint_kept_latents", bench.kept_latents)
    # Fewer steps of a higher-order sampler against the default DDPM's 100 (the pictures differ, so none is
    # compared with diffusers').
    for steps in (25, 30):
        bench.case(
            f"dpmpp_2m_{steps}",
            lambda steps=steps: bench.engine(
                bench.repeats, memory_mode="gpu", scheduler="DPM++ 2M", num_inference_steps=steps
            ),
        )
    pictures = tuple(
        np.random.default_rng(seed).integers(0, 256, (settings.height, settings.width, 3), dtype=np.uint8)
        for seed in (1, 2)
    )
    bench.case("gpu_mix", lambda: bench.engine(bench.repeats, mode="mix", inputs=Inputs(mix_images=pictures)))
    if device == "cuda":
        bench.case("prior_offload", lambda: bench.engine(bench.repeats, memory_mode="prior_offload"))
        bench.case("switching_prior_offload", lambda: bench.switching("prior_offload"))
    bench.case("switching_gpu", lambda: bench.switching("gpu"))
    if device == "cuda":
        bench.case(
            "prior_offload_compile_reduce-overhead",
            lambda: bench.engine(bench.repeats, memory_mode="prior_offload", compile_unet="reduce-overhead"),
        )
        bench.case("model_offload", lambda: bench.engine(few, memory_mode="model_offload"))
        bench.case(
            "model_offload_text_encoder_first",
            lambda: bench.engine(few, memory_mode="model_offload", model_offload_order="text_encoder->prior"),
        )
    bench.case("bfloat16", lambda: bench.engine(bench.repeats, dtype=torch.bfloat16))
    bench.case("channels_last", lambda: bench.engine(bench.repeats, channels_last=True))
    bench.case("classic_attention", lambda: bench.engine(bench.repeats, classic_attention=True))
    if device == "cuda":
        bench.case("cudnn_benchmark", lambda: bench.engine(bench.repeats, cudnn_benchmark=True))
    if device == "cuda":
        for mode in ("default", "reduce-overhead"):
            bench.case(f"compile_{mode}", lambda mode=mode: bench.engine(bench.repeats, compile_unet=mode))
        bench.case(
            "compile_prior_and_unet",
            lambda: bench.engine(bench.repeats, compile_unet="reduce-overhead", compile_prior="reduce-overhead"),
        )
    bench.case("compile_switches", lambda: bench.switches(compile_unet="reduce-overhead"))
    if device == "cuda":
        bench.case("sequential_offload", lambda: bench.engine(1, memory_mode="sequential_offload"))

    cases = report["cases"]
    if "median_s" in cases.get("diffusers", {}):
        for case in cases.values():
            if "median_s" in case and "latent_pixels" not in case:
                per_image = case.get("per_image_s", case["median_s"])
                case["speedup_over_diffusers"] = cases["diffusers"]["median_s"] / per_image
                case["times_flop_floor"] = per_image / report["flop_floor_s"]
    bench.save()
    print(json.dumps(report, indent=2))
    print(f"{'case':<28}{'median s':>10}{'min s':>8}{'max s':>8}{'first s':>9}{'peak GB':>9}{'x diffusers':>12}")
    for name, case in cases.items():
        if "median_s" not in case:
            print(f"{name:<28}{case.get('error', case.get('skipped', ''))[:120]}")
            for step, result in case.items():
                if isinstance(result, dict):
                    warm = result.get("warm_run_s", result.get("median_s"))
                    print(f"  {step:<26}{warm:>10.3f}{'':>16}{result['first_run_s']:>9.2f}")
            continue
        print(
            f"{name:<28}{case.get('per_image_s', case['median_s']):>10.3f}{case['min_s']:>8.3f}{case['max_s']:>8.3f}"
            f"{case['first_run_s']:>9.2f}{case.get('peak_memory_gb', 0):>9.2f}"
            f"{case.get('speedup_over_diffusers', float('nan')):>12.2f}"
        )


if __name__ == "__main__":
    main()
