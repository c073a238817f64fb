"""The netem backend's per-VLAN tc commands (pure; tests/guest runs them in a real kernel)."""

from __future__ import annotations

import pytest

from twin.emulation.link_backends import (
    LinkBackendError,
    TrunkChannel,
    trunk_netem_commands,
    trunk_rate_commands,
)

CHANNELS = [TrunkChannel(101, delay_us=1000.0, rate_bps=50e6),
            TrunkChannel(102, delay_us=1000.0, rate_bps=50e6),
            TrunkChannel(None, delay_us=1150.0, jitter_us=299.0, jitter_dist="normal", rate_bps=100e6)]


def _find(cmds, *words):
    return [c for c in cmds if all(w in c for w in words)]


def test_every_vlan_gets_its_own_class_netem_leaf_and_filter_and_untagged_the_default():
    cmds = trunk_netem_commands("a_b", CHANNELS)
    (root,) = _find(cmds, "root", "htb")
    assert root[root.index("default") + 1] == "3"      # the untagged channel's class 1:3
    for i, ch in enumerate(CHANNELS):
        classid = f"1:{i + 1:x}"
        (cls,) = _find(cmds, "class", classid)
        assert cls[cls.index("rate") + 1] == f"{int(ch.rate_bps)}bit"
        (leaf,) = _find(cmds, "netem", classid)
        assert leaf[leaf.index("delay") + 1] == f"{int(ch.delay_us)}us"
        assert "rate" in leaf                           # no reordering (link_backends docstring)
        filters = _find(cmds, "flower", classid)
        if ch.vid is None:
            assert filters == []
        else:
            (flt,) = filters
            assert flt[flt.index("vlan_id") + 1] == str(ch.vid) and "802.1Q" in flt
    (jittered,) = _find(cmds, "netem", "1:3")
    assert jittered[jittered.index("delay") + 1:jittered.index("delay") + 5] == ["1150us", "299us",
                                                                               "distribution", "normal"]


def test_a_rate_change_touches_only_that_vlans_class_and_leaf():
    cmds = trunk_rate_commands("a_b", CHANNELS, 102, 10e6)
    assert len(cmds) == 2
    cls, leaf = cmds
    assert cls[cls.index("classid") + 1] == "1:2" and cls[cls.index("rate") + 1] == "10000000bit"
    assert leaf[leaf.index("parent") + 1] == "1:2" and leaf[leaf.index("handle") + 1] == "11:"
    assert leaf[leaf.index("delay") + 1] == "1000us" and leaf[-1] == "10000000bit"
    # the same class and leaf handles as the set-up made them, so 'replace' changes them in place
    setup = trunk_netem_commands("a_b", CHANNELS)
    assert [c[:c.index("rate")] for c in cmds] == [c[:c.index("rate")] for c in setup
                                                     if "1:2" in c and "flower" not in c]


@pytest.mark.parametrize(("vid", "rate", "message"), [(999, 1e6, "no trunk channel has VLAN 999"),
                                                      (101, 0.0, "rate_bps must be > 0")])
def test_rate_change_errors_name_the_interface(vid, rate, message):
    with pytest.raises(LinkBackendError, match=f"a_b: .*{message}|a_b: {message}"):
        trunk_rate_commands("a_b", CHANNELS, vid, rate)


def test_cpu_masks_are_written_as_sysfs_reads_them():
    from twin.emulation.network import cpu_mask_text

    assert cpu_mask_text([0, 1]) == "3"
    assert cpu_mask_text([0, 33]) == "2,00000001"
    assert cpu_mask_text(range(64)) == "ffffffff,ffffffff"
