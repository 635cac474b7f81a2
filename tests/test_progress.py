"""The one progress bar: a loop wrapped in it sees every item once, in order, with the bar on or off."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("enabled", [False, True])
def test_track_yields_every_item_once_in_order(enabled):
    from tunelab.progress import track

    assert list(track(range(5), "counting", enabled)) == [0, 1, 2, 3, 4]
    assert list(track([], "nothing", enabled)) == []
