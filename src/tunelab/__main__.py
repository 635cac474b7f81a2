"""`python -m tunelab ...`: what torchrun and `accelerate launch -m tunelab` start in each process."""

import os
import signal
import threading
import time


def end_with_launcher() -> None:
    """End this process as soon as the launcher that started it is gone.

    torchrun starts each worker in a session of its own, so a SIGKILL of the launcher's process group (kill -9 of a
    `tunelab train --nproc N`, the OOM killer) would leave the workers training on, publishing a run the user stopped
    or writing into the staging folder a resume continues from. An orphan is handed to another parent at once, so the
    worker watches its parent's pid, read on its first line, milliseconds after it started.
    """
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="end-with-launcher", daemon=True).start()


if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun / accelerate as one of several processes
    end_with_launcher()

from tunelab.cli import main  # noqa: E402

main()
