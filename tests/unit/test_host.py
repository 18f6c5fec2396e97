"""The real node's host check: what changed is reported, what another live test bed holds
is not this one's doing."""

from __future__ import annotations

import os

from tests.testbed.host import differences


def test_a_leftover_of_this_test_bed_is_reported_and_another_live_ones_is_not() -> None:
    mine = f"tertulia-{os.getpid()}-ab12"
    other = "tertulia-1-cd34"  # PID 1 is alive: another test bed still running
    gone = "tertulia-999999999-ef56"  # a PID that is no process
    before = {"mounts": ["/ ext4"], "namespaces": []}
    after = {
        "mounts": ["/ ext4", "/run/netns ext4", f"/run/netns/{other} nsfs"],
        "namespaces": [mine, other, gone],
    }
    expected = sorted([f"namespaces: added {gone}", f"namespaces: added {mine}"])
    assert differences(before, after) == expected
    # Alone, the /run/netns mount it left is its own.
    assert differences(before, {"mounts": ["/ ext4", "/run/netns ext4"], "namespaces": []}) == [
        "mounts: added /run/netns ext4"
    ]
