"""A new user's first steps, as the README gives them: the plugin linked where Ikomia finds it, and the README's
Python example run offline on the tiny models."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ikomia_home import CHECKOUT, PLUGIN_NAME, PluginFolderTaken, link_checkout

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
