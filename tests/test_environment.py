"""What the plugin asks of its environment: the dependency ranges CI tests, the set-up script, the torch a
feature needs, the dtype models load in, and where the demo and the test tools write."""

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis.configuration import storage_directory
from PIL import Image

from demo import picture_paths
from helpers import left_half_mask, random_image
from ikomia_home import CHECKOUT
from infer_kandinsky_2_2.kandinsky22_engine.errors import CompileFailed
from infer_kandinsky_2_2.kandinsky22_engine.generation import load_models, runtime_for
from infer_kandinsky_2_2.kandinsky22_engine.models import ModelCache
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings
from infer_kandinsky_2_2.kandinsky22_engine.runtime import Runtime, check_cuda_graphs

REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)")
PIN = re.compile(r"([A-Za-z0-9_.-]+)\s*==\s*([^;\s]+)")


def _specifiers(path: Path, pattern: re.Pattern) -> dict[str, str]:
    """The package names of ``path`` (lower case) and the version that ``pattern`` reads for each."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = pattern.match(line.split("#", 1)[0].strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_ci_lowest_constraints_pin_every_lower_bound_of_the_requirements():
    lower_bounds = _specifiers(CHECKOUT / "requirements.txt", REQUIREMENT)
    pins = _specifiers(CHECKOUT / ".ci" / "lowest-constraints.txt", PIN)
    # torch is the user's: CI runs the one CPU build it installs, whatever the floor.
    lower_bounds.pop("torch")
    assert len(lower_bounds) >= 7
    assert pins == lower_bounds


@pytest.mark.parametrize(
    ("compile_unet", "torch_version", "main_thread", "refused"),
    [
        ("reduce-overhead", "2.12.1+cu124", False, True),
        ("reduce-overhead", "2.6.0", False, True),
        ("reduce-overhead", "2.12.1+cu124", True, False),
        ("reduce-overhead", "2.13.0", False, False),
        ("reduce-overhead", "2.13.0a0+git1234abc", False, False),
        ("reduce-overhead", "2.15.1+cu130", False, False),
        ("reduce-overhead", "3.0.0", False, False),
        ("default", "2.12.1", False, False),
        ("off", "2.12.1", False, False),
    ],
)
def test_cuda_graphs_outside_the_main_thread_are_refused_before_torch_2_13(
    compile_unet, torch_version, main_thread, refused
):
    if not refused:
        check_cuda_graphs(compile_unet, torch_version, main_thread)
        return
    with pytest.raises(CompileFailed) as error:
        check_cuda_graphs(compile_unet, torch_version, main_thread)
    message = str(error.value)
    assert message.startswith("compile_unet: 'reduce-overhead' (CUDA graphs) needs torch 2.13 or later")
    assert f"this torch is {torch_version}" in message
    assert "Set compile_unet to default or off, or install torch 2.13 or later." in message


def _in_worker_thread(call):
    """Run ``call`` in a worker thread, as Ikomia Studio runs a task; return its result or its exception."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return outcome[0]


def test_choosing_the_runtime_refuses_cuda_graphs_in_a_worker_thread_on_an_older_torch(monkeypatch, fake_gpus):
    fake_gpus(1)
    monkeypatch.setattr(torch, "__version__", "2.12.1+cu124")
    graphs = Settings(cuda=True, compile_unet="reduce-overhead")
    refused = _in_worker_thread(lambda: runtime_for(graphs))
    assert isinstance(refused, CompileFailed)
    assert "this torch is 2.12.1+cu124" in str(refused)
    # The main thread, another compile mode, or the CPU (where compiling is ignored) run as asked.
    assert runtime_for(graphs).compile_unet == "reduce-overhead"
    compiled = _in_worker_thread(lambda: runtime_for(Settings(cuda=True, compile_unet="default")))
    assert compiled.compile_unet == "default"
    on_the_cpu = _in_worker_thread(lambda: runtime_for(Settings(cuda=False, compile_unet="reduce-overhead")))
    assert on_the_cpu.device == "cpu"
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu128")
    assert _in_worker_thread(lambda: runtime_for(graphs)).compile_unet == "reduce-overhead"


@pytest.mark.parametrize(
    ("mode", "decoder"),
    [("text2img", "decoder"), ("inpaint", "inpaint_decoder"), ("controlnet_depth", "controlnet_decoder")],
)
def test_models_load_in_the_dtype_of_the_runtime(tiny_repos, mode, decoder):
    # float16 on the CPU: the dtype of a CUDA run, which the tiny repos (saved in float32) do not have.
    runtime = Runtime("cpu", torch.float16)
    # An empty negative prompt loads the image encoder as well.
    settings = Settings(
        mode=mode,
        model_name=str(getattr(tiny_repos, decoder)),
        prior_model_name=str(tiny_repos.prior),
        negative_prompt="",
    )
    pipelines = load_models(settings, runtime, ModelCache())
    modules = {
        **{f"prior {name}": each for name, each in pipelines.prior.components.items()},
        **{f"decoder {name}": each for name, each in pipelines.decoder.components.items()},
        "image encoder": pipelines.image_encoder.model,
    }
    dtypes = {
        name: {parameter.dtype for parameter in module.parameters()}
        for name, module in modules.items()
        if isinstance(module, torch.nn.Module)
    }
    assert {"prior prior", "prior text_encoder", "decoder unet", "decoder movq", "image encoder"} <= set(dtypes)
    assert dtypes == {name: {runtime.dtype} for name in dtypes}


FAKE_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for the environment's python: records each call; knows torch from $FAKE_TORCH or, once
# "installed", from the file torch.
here=$(dirname "$0")
echo "$*" >>"$here/calls"
if [[ "$1" == "-c" ]]; then
  if [[ -f "$here/torch" ]]; then
    cat "$here/torch"
  else
    echo "${FAKE_TORCH:?no torch}"
  fi
  exit 0
fi
for argument in "$@"; do
  if [[ "$argument" == torch==2.13.0 ]]; then echo 2.13.0+cpu >"$here/torch"; fi
done
"""


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """An environment whose python is ``FAKE_PYTHON``: the set-up script runs against it without pip."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON, encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "venv"


def _set_up(venv: Path, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CHECKOUT / "scripts" / "setup.sh"), "requirements-test.txt"],
        # Without the constraints of the set-up that runs this suite (CI's lowest versions).
        env={
            **{name: value for name, value in os.environ.items() if name != "KANDINSKY_CONSTRAINTS"},
            "KANDINSKY_VENV": str(venv),
            **environment,
        },
        capture_output=True,
        text=True,
        check=True,
    )


def _pip_installs(venv: Path) -> list[str]:
    calls = (venv / "bin" / "calls").read_text(encoding="utf-8").splitlines()
    return [call for call in calls if call.startswith("-m pip install")]


def test_set_up_keeps_the_torch_it_finds_and_does_nothing_the_second_time(fake_venv, tmp_path):
    first = _set_up(fake_venv, FAKE_TORCH="2.99.0+mybuild")
    assert first.stdout == f"{fake_venv / 'bin' / 'python'}\n"
    assert "keeping torch 2.99.0+mybuild" in first.stderr
    [install] = _pip_installs(fake_venv)
    keep_torch = fake_venv / ".infer_kandinsky_2_2-setup-torch.txt"
    assert install.endswith(f"-r requirements-test.txt -c {keep_torch}")
    assert keep_torch.read_text(encoding="utf-8") == "torch==2.99.0+mybuild\n"

    again = _set_up(fake_venv, FAKE_TORCH="2.99.0+mybuild")
    assert (again.stdout, again.stderr) == (first.stdout, "")
    assert len(_pip_installs(fake_venv)) == 1

    # Other constraints are another set-up.
    constraints = tmp_path / "lowest.txt"
    constraints.write_text("diffusers==0.40.0\n", encoding="utf-8")
    _set_up(fake_venv, FAKE_TORCH="2.99.0+mybuild", KANDINSKY_CONSTRAINTS=str(constraints))
    assert _pip_installs(fake_venv)[1].endswith(f"-r requirements-test.txt -c {constraints} -c {keep_torch}")
    _set_up(fake_venv, FAKE_TORCH="2.99.0+mybuild", KANDINSKY_CONSTRAINTS=str(constraints))
    constraints.write_text("diffusers==0.41.0\n", encoding="utf-8")
    _set_up(fake_venv, FAKE_TORCH="2.99.0+mybuild", KANDINSKY_CONSTRAINTS=str(constraints))
    assert len(_pip_installs(fake_venv)) == 3


def test_set_up_installs_torch_only_into_an_environment_without_one(fake_venv):
    result = _set_up(fake_venv)
    torch_install, requirements_install = _pip_installs(fake_venv)
    assert torch_install.endswith(" torch==2.13.0")
    assert "installing torch==2.13.0 (the environment has none)" in result.stderr
    assert "torch==" not in requirements_install
    assert (fake_venv / ".infer_kandinsky_2_2-setup-torch.txt").read_text(encoding="utf-8") == "torch==2.13.0+cpu\n"


def test_the_demo_writes_every_picture_of_a_run():
    assert picture_paths(Path("out.png"), 1) == [Path("out.png")]
    assert picture_paths(Path("pictures/out.png"), 3) == [
        Path("pictures/out_1.png"),
        Path("pictures/out_2.png"),
        Path("pictures/out_3.png"),
    ]


@pytest.mark.slow
def test_the_demo_feeds_a_mode_its_inputs_in_order_and_names_them_when_their_count_is_wrong(tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(random_image(1)).save(photo)
    Image.fromarray(left_half_mask()).save(mask)
    demo = [sys.executable, str(CHECKOUT / "scripts" / "demo.py"), "--tiny", "--set", "mode=inpaint"]
    options = ["--set", "height=64", "--set", "width=128", "--set", "num_inference_steps=2"]
    ran = subprocess.run(
        [*demo, *options, "--input", str(photo), "--input", str(mask), "--output", str(tmp_path / "out.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    # Ikomia's own log line comes before the metadata on stdout.
    metadata, _ = json.JSONDecoder().raw_decode(ran.stdout[ran.stdout.index("{") :])
    assert metadata["inputs"]["mask"].startswith("128x64, used as it is")
    assert Image.open(tmp_path / "out.png").size == (128, 64)
    refused = subprocess.run([*demo, "--input", str(photo)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert refused.stderr.endswith(
        "inpaint takes 2 image input(s), 'image', 'mask': give --input PATH once for each, in that order; --input was "
        "given 1 time(s).\n"
    )


def test_hypothesis_writes_outside_the_plugin_folder():
    assert not storage_directory("examples", intent_to_write=False).path.resolve().is_relative_to(CHECKOUT)
