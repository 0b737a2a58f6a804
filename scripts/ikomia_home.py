"""Make an Ikomia root in which infer_kandinsky_2_2 is installed as a link to this checkout.

Ikomia takes its root folder from HOME when it is imported (``~/Ikomia``) and finds a plugin only
as ``<root>/Plugins/Python/infer_kandinsky_2_2``. The demo and the tests run Ikomia from such a
root, so that they use this checkout and leave the user's own Ikomia folder alone.
"""

import os
from pathlib import Path

PLUGIN_NAME = "infer_kandinsky_2_2"
CHECKOUT = Path(__file__).resolve().parent.parent


def use_ikomia_home(home: Path) -> None:
    """Point HOME at ``home``, link the checkout there as the plugin, and keep Hugging Face's cache.

    Must run before ``ikomia`` is imported. HF_HOME is pinned to the cache of the real HOME, so
    that model downloads land in the standard Hugging Face cache, not in the plugin's root.
    """
    os.environ.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    os.environ.setdefault("IKOMIA_AUTO_COMPLETION", "false")
    plugins = home / "Ikomia" / "Plugins" / "Python"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / PLUGIN_NAME
    if link.is_symlink() and link.resolve() != CHECKOUT:
        link.unlink()
    if not link.exists():
        link.symlink_to(CHECKOUT, target_is_directory=True)
    os.environ["HOME"] = str(home)
