"""atomic.folder_lock: the one lock that keeps two processes from building one folder (GGUF imports,
the built-in index and reader) in the same staging folder at once."""

from __future__ import annotations

import threading
import time

from tunelab import atomic


def test_folder_lock_makes_a_second_builder_wait(tmp_path):
    final = tmp_path / "cache" / "model"  # its parent does not exist yet: the lock creates it
    order = []

    def second_builder():
        with atomic.folder_lock(final):
            order.append("second")

    with atomic.folder_lock(final):
        thread = threading.Thread(target=second_builder)
        thread.start()
        time.sleep(0.3)  # long enough for the second builder to reach the lock
        order.append("first done")
    thread.join(timeout=10)
    assert order == ["first done", "second"]
    assert (tmp_path / "cache" / ".model.lock").is_file() and not final.exists()
