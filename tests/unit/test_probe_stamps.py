"""Kernel transmit timestamps in the probes (loopback only, no root)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from twin.emulation.probe import (
    MAGIC,
    NO_FOLLOW_UP,
    PROBE_STRUCT,
    ProbeError,
    TX_TS_MAX_AFTER_NS,
    VERSION,
    Sample,
    TxStamps,
    _udp_socket,
    reflect,
    send,
    with_kernel_stamps,
)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tx_stamps_are_the_kernels_and_follow_the_userspace_ones():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = _udp_socket(socket.AF_INET)
    tx.connect(rx.getsockname())
    stamps = TxStamps(tx)
    userspace = {}
    for i in range(50):
        userspace[i] = time.time_ns()
        tx.send(b"x" * 64)
        stamps.sent(i)
    stamps.collect()
    kernel = {i: stamps.take(i, userspace[i]) for i in range(50)}
    tx.close()
    rx.close()
    assert all(userspace[i] <= kernel[i] <= userspace[i] + TX_TS_MAX_AFTER_NS for i in range(50))
    assert sum(kernel[i] != userspace[i] for i in range(50)) >= 45, "loopback gave (almost) no transmit stamps"
    assert stamps.take(0, 123) == 123  # taken once only


def test_implausible_stamps_fall_back_to_userspace():
    class Fixed:
        def __init__(self, value):
            self.value = value

        def take(self, _tag, userspace_ns):
            return self.value if userspace_ns <= self.value <= userspace_ns + TX_TS_MAX_AFTER_NS else userspace_ns

    s = Sample(seq=7, reflector_seq=1, t1=1_000, t2=5_000, t3=6_000, t4=9_000)
    got = with_kernel_stamps(s, Fixed(1_010), {7: 6_020})
    assert (got.t1, got.t3) == (1_010, 6_020)
    assert got.forward_ns == 3_990 and got.backward_ns == 2_980
    # A follow-up from before the reply was sent, or long after, is not this reply's.
    assert with_kernel_stamps(s, Fixed(1_010), {7: 5_999}).t3 == 6_000
    assert with_kernel_stamps(s, Fixed(1_010), {7: 6_000 + TX_TS_MAX_AFTER_NS + 1}).t3 == 6_000
    assert with_kernel_stamps(s, Fixed(10**12), {}) == s


def test_reflector_follows_up_its_previous_replys_kernel_stamp():
    port = _free_udp_port()
    worker = threading.Thread(target=reflect, args=("127.0.0.1", port), kwargs={"max_packets": 3}, daemon=True)
    worker.start()
    time.sleep(0.2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    sock.connect(("127.0.0.1", port))
    replies = []
    for seq in (10, 11, 12):
        buf = bytearray(64)
        PROBE_STRUCT.pack_into(buf, 0, MAGIC, VERSION, 0, 0, seq, 0, time.time_ns(), 0, 0, NO_FOLLOW_UP, 0)
        sock.send(buf)
        replies.append(PROBE_STRUCT.unpack_from(sock.recv(2048)))
    sock.close()
    worker.join(2.0)
    fields = [dict(zip(("magic", "ver", "flags", "pad", "seq", "rseq", "t1", "t2", "t3", "fu_seq", "fu_t3"), r))
              for r in replies]
    assert [f["seq"] for f in fields] == [10, 11, 12]
    assert fields[0]["fu_seq"] == NO_FOLLOW_UP
    for earlier, later in zip(fields, fields[1:]):
        assert later["fu_seq"] == earlier["seq"]
        assert earlier["t3"] <= later["fu_t3"] <= earlier["t3"] + TX_TS_MAX_AFTER_NS


def test_send_and_reflect_on_loopback_give_consistent_delays():
    port = _free_udp_port()
    bound = threading.Event()
    worker = threading.Thread(target=reflect, args=("127.0.0.1", port),
                              kwargs={"max_packets": 200, "on_ready": bound.set}, daemon=True)
    worker.start()
    assert bound.wait(5.0)
    samples, _rate = send("127.0.0.1", port, rate_pps=2000, count=200, wait_s=0.5)
    worker.join(2.0)
    assert len(samples) == 200
    for s in samples:
        assert s.forward_ns >= 0 and s.backward_ns >= 0, s
        assert s.rtt_ns == s.forward_ns + s.backward_ns


def test_probes_to_a_missing_reflector_are_lost_not_an_error():
    """ICMP port unreachable comes back for every probe; the sender counts them lost."""
    samples, _rate = send("127.0.0.1", _free_udp_port(), rate_pps=2000, count=50, wait_s=0.2)
    assert samples == []


def test_warmup_probes_are_echoed_but_never_counted():
    """The reflector sees warmup + count probes; the sender reports exactly the measured ones,
    numbered from 0, with kernel stamps still matched to the right datagrams."""
    port = _free_udp_port()
    bound = threading.Event()
    worker = threading.Thread(target=reflect, args=("127.0.0.1", port),
                              kwargs={"max_packets": 15 + 100, "on_ready": bound.set}, daemon=True)
    worker.start()
    assert bound.wait(5.0)
    samples, _rate = send("127.0.0.1", port, rate_pps=2000, count=100, wait_s=0.5, warmup=15)
    worker.join(2.0)
    assert not worker.is_alive()  # it did receive all 115
    assert sorted(s.seq for s in samples) == list(range(100))
    assert min(s.reflector_seq for s in samples) >= 15  # the warm-up went first
    for s in samples:
        assert s.forward_ns >= 0 and s.backward_ns >= 0 and s.forward_ns < 50_000_000, s


def test_negative_warmup_is_refused():
    with pytest.raises(ProbeError, match="--warmup"):
        send("127.0.0.1", _free_udp_port(), rate_pps=100, count=1, warmup=-1)


def test_flood_rejects_bad_input_with_one_line_errors(capsys):
    from twin.emulation.probe import flood_frame, main

    assert len(flood_frame(None, 60)) == 60 and flood_frame(4094)[14:16] == b"\x0f\xfe"
    for argv, what in ((["--vid", "5000"], "VLAN id 5000"), (["--size", "10"], "frame size 10"),
                       (["--pps", "0"], "must be > 0"), (["--iface", "no-such-if0"], "no-such-if0")):
        args = ["flood", "--iface", "lo", "--pps", "10", "--seconds", "0.01", *argv]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("probe: error:") and what in err and "\n" not in err, err
