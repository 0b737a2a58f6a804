"""Write tiny random-weight Kandinsky 2.2 models into a folder and print which parameter takes each: the offline
recipe of the README's Python example. Their pictures are noise; they check the whole path with no hub.

Usage: python scripts/tiny_models.py FOLDER   (the folder is made; models already there are written again)
The models are those of the tests and of ``scripts/demo.py --tiny`` (``kandinsky22_devkit/tiny.py``): the published
configs with only their sizes scaled down, about 34 MB in all.
"""

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the models")
    folder = parser.parse_args().folder.resolve()
    # The devkit and the engine import nothing from the plugin's package: the checkout's folder is enough.
    sys.path.insert(0, str(CHECKOUT))
    from kandinsky22_devkit.tiny import build_tiny_repos
    from kandinsky22_engine.modes import MODES

    repos = build_tiny_repos(folder)
    print(f"prior_model_name: {repos.prior}")
    for role in dict.fromkeys(mode.decoder.role for mode in MODES.values()):
        modes = ", ".join(name for name, mode in MODES.items() if mode.decoder.role == role)
        print(f"model_name ({modes}): {getattr(repos, role)}")


if __name__ == "__main__":
    main()
