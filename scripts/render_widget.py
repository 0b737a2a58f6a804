"""Render the Studio widget offscreen to a PNG, as Studio shows it with default parameters.

Usage: python scripts/render_widget.py [images/widget.png]   (run with the test environment's python)
"""

import os
import sys
import tempfile
from pathlib import Path

from ikomia_home import CHECKOUT, use_ikomia_home

WIDTH = 560


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else CHECKOUT / "images" / "widget.png"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    home = Path(tempfile.mkdtemp(prefix="render_widget_"))
    use_ikomia_home(home)
    sys.path.insert(0, str(home / "Ikomia" / "Plugins" / "Python"))
    from PyQt6.QtWidgets import QApplication

    application = QApplication.instance() or QApplication([])
    from infer_kandinsky_2_2.infer_kandinsky_2_2 import IkomiaPlugin

    plugin = IkomiaPlugin()
    widget = plugin.get_widget_factory().create(plugin.get_param_factory().create())
    host = widget.main_layout.parentWidget()
    host.resize(WIDTH, host.sizeHint().height())
    if not host.grab().save(str(output)):
        sys.exit(f"could not write {output}")
    application.processEvents()
    print(f"Widget written to {output}")


if __name__ == "__main__":
    main()
