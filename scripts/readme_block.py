"""Print the first ```sh block under a README heading, for a check that runs it as written.

    readme_block.py README.md deploy     -> the commands of "## Deploy"
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def block(readme: str, heading: str) -> str:
    section = re.search(rf"^##+ {re.escape(heading)}\b.*?$(.*?)(?=^## |\Z)", readme, re.M | re.S | re.I)
    if section is None:
        raise SystemExit(f"no heading {heading!r} in the README")
    code = re.search(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    if code is None:
        raise SystemExit(f"no ```sh block under {heading!r}")
    return code.group(1)


if __name__ == "__main__":
    sys.stdout.write(block(Path(sys.argv[1]).read_text(encoding="utf-8"), sys.argv[2]))
