"""Link this checkout into the Ikomia folder of Python plugins, where ``wf.add_task(name="infer_kandinsky_2_2")``
finds it, and say what was linked where.

The folder is the one Ikomia itself loads plugins from, asked of Ikomia (``ik_registry.get_plugins_directory()``,
``~/Ikomia/Plugins`` unless Ikomia's ``config.yaml`` names another root), with ``Python/infer_kandinsky_2_2``
under it. Run it with the python of the environment that runs Ikomia (``scripts/demo.sh`` does, with
``~/.venvs/infer_kandinsky_2_2/bin/python``). Exits with status 2, changing nothing, where another copy of the
plugin is there already.
"""

import sys
from pathlib import Path

from ikomia_home import PluginFolderTaken, link_checkout


def main() -> None:
    from ikomia.dataprocess.registry import ik_registry

    plugins = Path(ik_registry.get_plugins_directory()) / "Python"
    try:
        print(f"{Path(__file__).name}: {link_checkout(plugins)}")
    except PluginFolderTaken as error:
        print(f"{Path(__file__).name}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
