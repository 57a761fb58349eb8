"""Where a benchmark writes its results: a path the user gave, or for "auto" a dated file in
the default folder (under the current directory)."""
from __future__ import annotations

import datetime
import json
import os


def output_path(out: str | None, folder: str, stem: str) -> str | None:
    """`out` as given; for "auto", FOLDER/STEM_<date>_<time>.json; None: write nothing."""
    if out != "auto":
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M")
    return os.path.join(folder, f"{stem}_{stamp}.json")


def write_json(path: str, obj) -> None:
    """obj as indented JSON at path, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
