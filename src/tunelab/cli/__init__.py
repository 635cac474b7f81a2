"""tunelab's command line. Each command parses arguments, calls one library function and prints.

Feature commands live in their own modules (cli/<feature>.py) and are registered below.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Feature modules register their commands on `app` when imported.
# --- feature command registrations (one line each) ---
from tunelab.cli import (
    compare,  # noqa: E402,F401
    core,  # noqa: E402,F401
    evaluate,  # noqa: E402,F401
    lm,  # noqa: E402,F401
    prompts,  # noqa: E402,F401
    rag,  # noqa: E402,F401
    registry,  # noqa: E402,F401
    serve,  # noqa: E402,F401
)
from tunelab.cli._app import app  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

# --- end of registrations ---


def main() -> None:
    try:
        app(standalone_mode=True)
    except TunelabError as error:
        from tunelab.cli._app import fail

        fail(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
