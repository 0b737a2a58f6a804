"""Render the Studio widget offscreen to a PNG, as Studio shows it with default parameters, or in another mode.

Usage: python scripts/render_widget.py [--mode MODE] [output.png]   (run with the test environment's python)
The default output is images/widget.png, or images/widget_<mode>.png with --mode.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ikomia_home import CHECKOUT, use_ikomia_home

WIDTH = 560


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", help="the mode to show (default: the default mode)")
    parser.add_argument("output", nargs="?", type=Path)
    arguments = parser.parse_args()
    default = f"widget_{arguments.mode}.png" if arguments.mode else "widget.png"
    output = arguments.output or CHECKOUT / "images" / default
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    home = Path(tempfile.mkdtemp(prefix="render_widget_"))
    use_ikomia_home(home)
    sys.path.insert(0, str(home / "Ikomia" / "Plugins" / "Python"))
    from PyQt6.QtWidgets import QApplication

    application = QApplication.instance() or QApplication([])
    from infer_kandinsky_2_2.infer_kandinsky_2_2 import IkomiaPlugin

    plugin = IkomiaPlugin()
    parameters = plugin.get_param_factory().create()
    if arguments.mode:
        parameters.set_values({"mode": arguments.mode})
    widget = plugin.get_widget_factory().create(parameters)
    host = widget.main_layout.parentWidget()
    host.resize(WIDTH, host.sizeHint().height())
    if not host.grab().save(str(output)):
        sys.exit(f"could not write {output}")
    application.processEvents()
    print(f"Widget written to {output}")


if __name__ == "__main__":
    main()
