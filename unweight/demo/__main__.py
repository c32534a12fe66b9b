"""``python -m unweight.demo``: build every demo checkpoint (if needed) and print its folder."""

from __future__ import annotations

import logging
import sys

from unweight import demo
from unweight.errors import UnweightError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        paths = {
            "smollm2": demo.smollm2_dir(),
            "minilm-float32": demo.minilm_dir("float32"),
            "minilm-bfloat16": demo.minilm_dir("bfloat16"),
        }
    except UnweightError as error:  # known failures: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
