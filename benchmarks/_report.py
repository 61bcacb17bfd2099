"""Shared output of the benchmark scripts: JSON on stdout, and to a file when asked."""

from __future__ import annotations

import json


def emit(result: dict, json_out: str | None) -> None:
    print(json.dumps(result, indent=2))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)
