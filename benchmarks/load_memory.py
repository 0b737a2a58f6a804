"""The CPU memory a process needs to load the published-size Kandinsky 2.2 models through the engine.

Builds random-weight repos at the published sizes in FOLDER (``kandinsky22_devkit/tiny.py``, ``FULL``: the
published configs, every weight stored in the published dtype, float32 but the image encoder's float16), one
model at a time, then measures each case in a new process: ikomia imported, as in the task's process, then the
engine's ``generation.load_models`` (what the task calls before a run) on the case's runtime:

- text2img: the prior repo without its image encoder and the decoder, what the default run loads (its negative
  prompt is set, so it needs no image encoder); mix: the image encoder too;
- float16: as a CUDA run loads them, on the CPU in float16 before it places them (``Runtime("cpu",
  torch.float16)``: model_offload keeps them there between their visits to the GPU); float32: as a CPU run
  loads them;
- after the load, every weight is read once, as a run (or a copy to the GPU) reads it: safetensors maps the files,
  and a weight kept in its stored dtype occupies RAM only once read;
- ``text2img-float32-run``: a CPU run after that, through ``generation.generate``, at the default 768 x 768
  with the fewest steps (2 prior steps, 1 decoder step: activations do not add up from one step to the next).

A thread samples ``/proc/self/status`` every 20 ms; the report gives, in GB of 10^9 bytes, the resident memory
after the imports and after the load (before the weights are read), the kernel's peak resident memory (``VmHWM``:
what was in RAM at once, file pages mapped from the weights included), the sampled peak of anonymous memory (what
only RAM or swap can hold) and of mapped file pages, and what stays resident at the end (after the weights are
read, or after the run). While a case runs, it is stopped should the machine's available memory fall under
1.5 GB, so that it never starves other processes; the report then says so.

python benchmarks/load_memory.py --folder /tmp/k22-full-size [--cases ...] [--output report.json] [--keep]

The folder takes 15.9 GB and is deleted at the end unless ``--keep`` is given (then a later call reuses it).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_task import ikomia_root, write_report

CASES = ("text2img-float16", "mix-float16", "text2img-float32", "mix-float32", "text2img-float32-run")
GB = 1e9
STOP_UNDER_AVAILABLE_GB = 1.5
# The models of each built repo: (repo, model, dtype the published weights are stored in).
REPO_MODELS = {
    "prior": (("text_encoder", "float32"), ("image_encoder", "float16"), ("prior", "float32")),
    "decoder": (("unet", "float32"), ("movq", "float32")),
}


def build_full_size_repos(folder: Path) -> dict[str, Path]:
    """Write the published prior and text-to-image decoder repos with random weights at the published sizes under
    ``folder``, one model at a time (at most one model in memory), unless a previous call finished them.

    Every config file is the published one (the image encoder's and the tokenizer's as ``published.py``
    reconstructs them); the tokenizer is the tiny byte-level one (``tiny.write_tokenizer``), a few MB less than
    CLIP's vocabulary. Returns the repos' folders by repo name ("prior", "decoder").
    """
    import torch
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from kandinsky22_devkit.published import config_path, published_config, published_paths
    from kandinsky22_devkit.tiny import FULL, model_config, write_tokenizer

    def text_encoder() -> torch.nn.Module:
        return CLIPTextModelWithProjection(CLIPTextConfig.from_dict(model_config("prior", "text_encoder", FULL)))

    def image_encoder() -> torch.nn.Module:
        config = model_config("prior", "image_encoder", FULL)
        del config["torch_dtype"]  # built in the default dtype, set to the stored one below
        return CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(config))

    builders = {
        "text_encoder": text_encoder,
        "image_encoder": image_encoder,
        "prior": lambda: PriorTransformer.from_config(model_config("prior", "prior", FULL)),
        "unet": lambda: UNet2DConditionModel.from_config(model_config("decoder", "unet", FULL)),
        "movq": lambda: VQModel.from_config(model_config("decoder", "movq", FULL)),
    }
    repos = {repo: folder / f"kandinsky-2-2-{repo}" for repo in REPO_MODELS}
    for repo, path in repos.items():
        done = path / "complete"
        if done.exists():
            continue
        for model, dtype in REPO_MODELS[repo]:
            default_dtype = torch.get_default_dtype()
            torch.set_default_dtype(getattr(torch, dtype))
            try:
                torch.manual_seed(0)
                built = builders[model]()
            finally:
                torch.set_default_dtype(default_dtype)
            built.save_pretrained(path / model, safe_serialization=True)
            del built
            gc.collect()
            # The config as published, not as this transformers or diffusers release writes it.
            config = json.dumps(published_config(repo, f"{model}/config.json"), indent=2)
            (path / model / "config.json").write_text(config, encoding="utf-8")
        for name in published_paths(repo):
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(config_path(repo, name).read_bytes())
        if repo == "prior":
            write_tokenizer(path / "tokenizer")
        done.write_text("", encoding="utf-8")
    return repos


def weight_files(repos: dict[str, Path]) -> dict[str, dict[str, int]]:
    """The size in bytes of every safetensors file written, beside the published file's size."""
    from kandinsky22_devkit.published import REPOS, file_sizes

    sizes = {}
    for repo, path in repos.items():
        published = next(iter(file_sizes()[REPOS[repo]].values()))
        for file in sorted(path.rglob("*.safetensors")):
            name = file.relative_to(path).as_posix()
            sizes[f"{repo}/{name}"] = {"written": file.stat().st_size, "published": published.get(name)}
    return sizes


def memory_status() -> dict[str, float]:
    """This process's VmRSS, VmHWM, RssAnon and RssFile from ``/proc/self/status``, in GB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[name] = int(rest.split()[0]) * 1024 / GB
    return values


class Sampler(threading.Thread):
    """Samples ``memory_status`` every 20 ms and keeps the largest value of each field."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for name, value in memory_status().items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), value)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        return {name: round(value, 3) for name, value in self.peaks.items()}


def measure(case: str, repos: dict[str, str]) -> dict:
    """Load the models of ``case`` in this process (see the module's docstring) and say what memory it took."""
    home = ikomia_root("load_memory_")
    import ikomia.dataprocess.workflow  # noqa: F401  (the task's process has ikomia loaded)
    import torch

    from kandinsky22_engine.generation import generate, load_models
    from kandinsky22_engine.models import ModelCache
    from kandinsky22_engine.parameters import Settings
    from kandinsky22_engine.runtime import Runtime

    mode, dtype, *run = case.split("-")
    values = {"mode": mode, "model_name": repos["decoder"], "prior_model_name": repos["prior"], "cuda": "False"}
    if run:
        values.update({"prior_num_inference_steps": "2", "num_inference_steps": "1", "seed": "0"})
    settings = Settings.from_strings(values)
    runtime = Runtime("cpu", getattr(torch, dtype))
    gc.collect()
    after_imports = memory_status()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    cache = ModelCache()
    models = load_models(settings, runtime, cache)
    seconds = {"load": round(time.perf_counter() - started, 1)}
    after_load = memory_status()
    modules = {
        f"{role}/{name}": part
        for role, pipeline in (("prior", models.prior), ("decoder", models.decoder))
        for name, part in pipeline.components.items()
        if isinstance(part, torch.nn.Module)
    }
    if models.image_encoder is not None:
        modules["prior/image_encoder"] = models.image_encoder.model
    # safetensors maps a file's weights into memory and a tensor kept in the stored dtype stays a view of the file,
    # whose pages become resident only when read: read every weight once, as a run (or a copy to the GPU) does.
    with torch.no_grad():
        for module in modules.values():
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.sum(dtype=torch.float32)
    seconds["read"] = round(time.perf_counter() - started - seconds["load"], 1)
    if run:
        generation = generate(settings, runtime=runtime, cache=cache)
        seconds["run"] = round(time.perf_counter() - started - seconds["load"] - seconds["read"], 1)
        seconds["stages"] = generation.metadata["seconds"]
    peaks = sampler.stop()
    shutil.rmtree(home)
    gc.collect()
    parameters = sum(tensor.numel() for module in modules.values() for tensor in module.parameters())
    return {
        "case": case,
        "dtype": dtype,
        "loaded": sorted(modules),
        "parameters_billion": round(parameters / 1e9, 3),
        "after_imports_gb": {name: round(value, 3) for name, value in after_imports.items()},
        "after_load_gb": {name: round(value, 3) for name, value in after_load.items()},
        "peak_rss_gb": round(memory_status()["VmHWM"], 3),
        "sampled_peaks_gb": peaks,
        "at_end_gb": {name: round(value, 3) for name, value in memory_status().items()},
        "seconds": seconds,
    }


def available_gb() -> float:
    """The machine's available memory (``MemAvailable``), in GB."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def run_case(case: str, repos: dict[str, Path]) -> dict:
    """Measure ``case`` in a new process, stopped should the machine's available memory fall under
    ``STOP_UNDER_AVAILABLE_GB``; its report, or what stopped it."""
    folders = json.dumps({repo: str(path) for repo, path in repos.items()})
    command = [sys.executable, __file__, "--measure", case, "--repos", folders]
    before = round(available_gb(), 1)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    lowest = before
    while child.poll() is None:
        lowest = min(lowest, available_gb())
        if lowest < STOP_UNDER_AVAILABLE_GB:
            child.kill()
            child.wait()
            return {"case": case, "stopped": f"available memory fell to {lowest:.1f} GB", "available_before_gb": before}
        time.sleep(0.1)
    output = child.stdout.read().strip().splitlines()
    if child.returncode != 0 or not output:
        return {"case": case, "error": f"exit status {child.returncode}", "available_before_gb": before}
    # The report is the last line: ikomia may print before it.
    return {**json.loads(output[-1]), "available_before_gb": before, "available_lowest_gb": round(lowest, 1)}


def machine() -> dict:
    """The cores, memory and versions of this machine."""
    from importlib.metadata import version

    import diffusers
    import torch
    import transformers

    return {
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "ikomia": version("ikomia"),
        "cuda_available": torch.cuda.is_available(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where the full-size repos are built (15.9 GB)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--output", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the built repos for a later call")
    parser.add_argument("--measure", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--repos", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    if arguments.measure:
        print("\n" + json.dumps(measure(arguments.measure, json.loads(arguments.repos))))
        return
    if arguments.folder is None:
        parser.error("--folder is required")
    started = time.perf_counter()
    repos = build_full_size_repos(arguments.folder)
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "build_s": round(time.perf_counter() - started, 1),  # near 0 when a kept folder is reused
        "weights": weight_files(repos),
        "cases": [],
    }
    for case in arguments.cases:
        report["cases"].append(run_case(case, repos))
        print(json.dumps(report["cases"][-1]), file=sys.stderr, flush=True)
        if arguments.output:
            arguments.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if not arguments.keep:
        shutil.rmtree(arguments.folder)
    write_report(report, arguments.output)


if __name__ == "__main__":
    main()
