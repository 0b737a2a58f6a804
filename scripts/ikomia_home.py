"""Install infer_kandinsky_2_2 in an Ikomia root as a link to this checkout.

Ikomia (``ikomia.core.config``) takes its root folder from HOME when it is imported (``~/Ikomia``, unless its
``config.yaml`` names another) and keeps plugins in ``<root>/Plugins``; ``wf.add_task(name=...)`` loads a Python
plugin from ``<root>/Plugins/Python/<name>`` before it would try Ikomia HUB (``IkomiaRegistry.create_algorithm``).
The demo and the tests run Ikomia from a root of their own, so that they use this checkout and leave the user's own
Ikomia folder alone; ``scripts/link_plugin.py`` links the checkout into the user's.
"""

import os
from pathlib import Path

PLUGIN_NAME = "infer_kandinsky_2_2"
CHECKOUT = Path(__file__).resolve().parent.parent


class PluginFolderTaken(RuntimeError):
    """The plugins folder holds another infer_kandinsky_2_2 (a folder, or a link elsewhere); the message names it."""


def link_checkout(plugins: Path, *, replace_link: bool = False) -> str:
    """Make ``plugins/infer_kandinsky_2_2`` this checkout, as a symbolic link, and say what was done.

    ``plugins`` is an Ikomia folder of Python plugins (``<root>/Plugins/Python``), made if missing. Nothing changes
    where the entry is this checkout already (a link to it, or the checkout itself). A link to elsewhere is
    replaced when ``replace_link`` is set; otherwise, as a folder there would be, it is kept and
    ``PluginFolderTaken`` is raised: it may be another copy of the plugin, installed from Ikomia HUB or cloned.
    Returns one line: the link and its target.
    """
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / PLUGIN_NAME
    if link.exists() and link.resolve() == CHECKOUT:
        return f"{link} is this checkout already ({CHECKOUT})"
    if link.is_symlink() and replace_link:
        link.unlink()
    if link.exists() or link.is_symlink():
        kind = f"a link to {os.readlink(link)}" if link.is_symlink() else "a folder"
        raise PluginFolderTaken(
            f"{link} is {kind}, not this checkout ({CHECKOUT}); Ikomia loads that one. It was kept: remove it, "
            "then run this again to link this checkout there."
        )
    link.symlink_to(CHECKOUT, target_is_directory=True)
    return f"linked {link} -> {CHECKOUT}"


def use_ikomia_home(home: Path) -> None:
    """Point HOME at ``home``, link the checkout there as the plugin, and keep Hugging Face's cache.

    Must run before ``ikomia`` is imported. HF_HOME is pinned to the cache of the real HOME, so
    that model downloads land in the standard Hugging Face cache, not in the plugin's root.
    """
    os.environ.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    os.environ.setdefault("IKOMIA_AUTO_COMPLETION", "false")
    link_checkout(home / "Ikomia" / "Plugins" / "Python", replace_link=True)
    os.environ["HOME"] = str(home)
