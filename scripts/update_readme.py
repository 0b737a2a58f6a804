"""Rewrite the README's parameter table from the single parameter definition.

Usage: python scripts/update_readme.py (a test fails while the README differs from it).
"""

import re
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from kandinsky22_engine.parameters import markdown_table  # noqa: E402

README = CHECKOUT / "README.md"
BLOCK = re.compile(r"(<!-- parameters:start -->\n).*?(\n<!-- parameters:end -->)", re.S)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        sys.exit("README.md has no <!-- parameters:start --> ... <!-- parameters:end --> block")
    table = markdown_table()
    README.write_text(BLOCK.sub(lambda match: match.group(1) + table + match.group(2), text), encoding="utf-8")


if __name__ == "__main__":
    main()
