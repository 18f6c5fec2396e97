"""The real node's host check: what changed is reported, what another live test bed holds
is not this one's doing."""

from __future__ import annotations

import os

from tests.testbed.host import differences


def test_a_leftover_of_this_test_bed_is_reported_and_another_ones_is_not() -> None:
    mine = f"tertulia-{os.getpid()}-ab12"
    other = "tertulia-1-cd34"  # another test bed, still running
    killed = "tertulia-999999999-ef56"  # one killed before, cleaned up meanwhile
    before = {"mounts": ["/ ext4"], "namespaces": [killed]}
    after = {
        "mounts": ["/ ext4", "/run/netns ext4", f"/run/netns/{other} nsfs"],
        "namespaces": [mine, other],
    }
    assert differences(before, after) == [f"namespaces: added {mine}"]
    # Alone, the /run/netns mount it left is its own.
    alone = {"mounts": ["/ ext4"], "namespaces": []}
    assert differences(alone, {"mounts": ["/ ext4", "/run/netns ext4"], "namespaces": []}) == [
        "mounts: added /run/netns ext4"
    ]
