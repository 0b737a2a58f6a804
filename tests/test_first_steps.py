"""A new user's first steps, as the README gives them: the plugin linked where Ikomia finds it, the README's Python
example run offline on the tiny models, and the demo's failures told as what to do."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from demo import TINY_HINT, DemoError, check_sets, explain, feed_inputs, parse_sets
from helpers import workflow_with
from ikomia_home import CHECKOUT, PLUGIN_NAME, PluginFolderTaken, link_checkout
from infer_kandinsky_2_2.kandinsky22_engine.errors import SettingsError
from infer_kandinsky_2_2.kandinsky22_engine.parameters import Settings

README = CHECKOUT / "README.md"
SCRIPTS = CHECKOUT / "scripts"


def readme_python_example() -> str:
    """The code block that follows the README's "Use from Python" heading."""
    section = README.read_text(encoding="utf-8").split("## Use from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_checkout_is_linked_once_and_another_copy_is_kept(tmp_path):
    plugins = tmp_path / "Ikomia" / "Plugins" / "Python"
    link = plugins / PLUGIN_NAME
    assert link_checkout(plugins) == f"linked {link} -> {CHECKOUT}"
    assert link.resolve() == CHECKOUT
    assert link_checkout(plugins) == f"{link} is this checkout already ({CHECKOUT})"
    link.unlink()
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PluginFolderTaken, match=rf"^{link} is a link to {tmp_path}, not this checkout"):
        link_checkout(plugins)
    assert link.resolve() == tmp_path
    assert link_checkout(plugins, replace_link=True) == f"linked {link} -> {CHECKOUT}"
    link.unlink()
    link.mkdir()
    with pytest.raises(PluginFolderTaken, match=rf"^{link} is a folder, not this checkout"):
        link_checkout(plugins, replace_link=True)
    assert link.is_dir() and not link.is_symlink()


@pytest.mark.slow
def test_the_readme_python_example_runs_offline_on_the_tiny_models_once_the_plugin_is_linked(tmp_path):
    # A user's Ikomia home, empty but for what the README's commands put there; no hub.
    environment = {**os.environ, "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *command], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600
        )

    linked = run(str(SCRIPTS / "link_plugin.py"))
    assert linked.returncode == 0, linked.stderr
    link = tmp_path / "home" / "Ikomia" / "Plugins" / "Python" / PLUGIN_NAME
    assert linked.stdout == f"link_plugin.py: linked {link} -> {CHECKOUT}\n"

    written = run(str(SCRIPTS / "tiny_models.py"), "tiny")
    assert written.returncode == 0, written.stderr
    folders = dict(line.split(": ", 1) for line in written.stdout.splitlines())
    assert folders["prior_model_name"] == str(tmp_path / "tiny" / "tiny-kandinsky-2-2-prior")
    decoder = folders["model_name (text2img, img2img, mix)"]

    example = readme_python_example()
    # Only the model names change.
    for published, tiny in (
        ('"kandinsky-community/kandinsky-2-2-decoder"', repr(decoder)),
        ('"kandinsky-community/kandinsky-2-2-prior"', repr(folders["prior_model_name"])),
    ):
        assert example.count(published) == 1
        example = example.replace(published, tiny)
    (tmp_path / "example.py").write_text(
        example + 'from PIL import Image\nImage.fromarray(image).save("picture.png")\n', encoding="utf-8"
    )
    ran = run("example.py")
    assert ran.returncode == 0, ran.stderr
    picture = np.asarray(Image.open(tmp_path / "picture.png"))
    height, width = (int(re.search(rf'"{name}": "(\d+)"', example).group(1)) for name in ("height", "width"))
    assert picture.shape == (height, width, 3)
    assert picture.std() > 0


def test_a_set_option_that_is_not_name_equals_value_is_refused_with_the_accepted_form():
    assert parse_sets(["seed=42", "prompt=a=b"]) == {"seed": "42", "prompt": "a=b"}
    for item in ("prompt", "=x"):
        with pytest.raises(DemoError) as refused:
            parse_sets([item])
        accepted = "NAME=VALUE, e.g. --set seed=42 or --set prompt='a red cat'."
        assert str(refused.value) == f"--set {item}: accepted: {accepted}"


def test_a_set_option_the_task_would_refuse_is_named_with_what_it_accepts():
    assert check_sets({}) == "text2img"
    assert check_sets({"mode": "inpaint"}) == "inpaint"
    with pytest.raises(DemoError) as refused:
        check_sets({"mode": "foo", "num_inference_step": "3"})
    lines = str(refused.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "--set num_inference_step: unknown parameter; did you mean num_inference_steps or prior_num_inference_steps? "
    )
    assert lines[1].startswith("--set mode: received 'foo'; accepted: one of text2img, img2img, inpaint, outpaint, ")


@pytest.mark.parametrize(
    ("mode", "inputs", "told"),
    [
        ("text2img", 1, "text2img takes no image input: leave --input out; --input was given 1 time(s)."),
        (
            "img2img",
            0,
            "img2img takes 1 image input(s), 'image': give --input PATH once for each, in that order; --input was "
            "given 0 time(s).",
        ),
    ],
)
def test_the_demo_names_the_mode_its_image_inputs_and_what_to_give_when_their_count_is_wrong(
    tiny_strings, tmp_path, mode, inputs, told
):
    workflow, task = workflow_with({**tiny_strings, "mode": mode})
    with pytest.raises(SystemExit) as exited:
        feed_inputs(workflow, task, mode, [tmp_path / "photo.png"] * inputs)
    assert exited.value.code == told


def test_a_task_error_is_told_in_its_own_words_out_of_ikomias_wrapping():
    workflow, _ = workflow_with({"height": "65"})
    with pytest.raises(RuntimeError) as failed:
        workflow.run()
    with pytest.raises(SettingsError) as expected:
        Settings.from_strings({"height": "65"})
    assert explain(failed.value) == f"infer_kandinsky_2_2: {expected.value}"
    assert explain(SettingsError("height: received '65'")) == "infer_kandinsky_2_2: height: received '65'"
    assert explain(ValueError("boom\nin detail")) == (
        "infer_kandinsky_2_2: ValueError: boom (--traceback shows where it came from)"
    )


def test_a_run_that_cannot_reach_the_hub_says_to_try_tiny(cache_folder):
    workflow, _ = workflow_with({})
    with pytest.raises(RuntimeError) as failed:
        workflow.run()
    told = explain(failed.value)
    assert told.startswith(
        "infer_kandinsky_2_2: model_name: 'kandinsky-community/kandinsky-2-2-decoder' is not (fully) in the local "
        f"Hugging Face cache ({cache_folder}) and HF_HUB_OFFLINE is set, so it cannot be downloaded (missing: "
    )
    assert told.endswith(f"or give a local folder. {TINY_HINT}")


@pytest.mark.slow
def test_the_demo_prints_the_task_message_alone_and_the_traceback_only_when_asked(tmp_path):
    demo = [sys.executable, str(SCRIPTS / "demo.py"), "--output", str(tmp_path / "out.png")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "huggingface")}
    told = subprocess.run(demo, capture_output=True, text=True, env=environment, timeout=300)
    assert told.returncode == 1
    assert "Traceback" not in told.stderr
    message = told.stderr.strip().splitlines()[-1]
    assert message.startswith("infer_kandinsky_2_2: model_name: 'kandinsky-community/kandinsky-2-2-decoder' is not")
    assert message.endswith(TINY_HINT)
    shown = subprocess.run([*demo, "--traceback"], capture_output=True, text=True, env=environment, timeout=300)
    assert shown.returncode == 1
    assert "Traceback (most recent call last)" in shown.stderr
    assert "HubUnreachable" in shown.stderr
