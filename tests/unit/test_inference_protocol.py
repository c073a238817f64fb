"""The inference protocol's pure half: request -> model input, session tracks, state blobs."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from twin.workloads import protocol as proto
from twin.workloads.loadgen import LoadConfig, LoadError, arrival_offsets, parse_target


# --------------------------------------------------------------------------- request -> input


def test_derive_input_is_deterministic_and_every_byte_counts():
    rng = np.random.default_rng(1)
    body = rng.bytes(16 * 1024)
    shape = proto.MODEL_INPUT_SHAPES["sensor-fusion-mlp"]
    a, b = proto.derive_input(body, shape), proto.derive_input(bytes(body), shape)
    assert a.shape == shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    # Flip the last byte (in the fourth fold of 4,096 slots): exactly one slot changes.
    flipped = body[:-1] + bytes([body[-1] ^ 0xFF])
    diff = proto.derive_input(flipped, shape) != a
    assert diff.sum() == 1
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0


def test_derive_input_by_hand():
    # Shorter than the tensor: repeated. Longer: folded as byte sums mod 256.
    assert proto.derive_input(b"\x00\xff", (4,)).tolist() == [-1.0, 1.0, -1.0, 1.0]
    folded = proto.derive_input(bytes([200, 1, 100, 2]), (2,))  # (200+100) % 256 = 44, 1+2 = 3
    assert folded.tolist() == pytest.approx([44 / 127.5 - 1, 3 / 127.5 - 1])
    assert proto.derive_input(b"", (3,)).tolist() == [-1.0, -1.0, -1.0]
    big = proto.derive_input(bytes(1_000_000), proto.MODEL_INPUT_SHAPES["farm-cnn"])
    assert big.shape == (1, 3, 128, 128)


def test_session_track_changes_the_input_and_is_pure():
    x = proto.derive_input(b"abc" * 500, (1, 64, 16))
    first, t1 = proto.fuse_with_track(x, None)
    second, t2 = proto.fuse_with_track(x, t1)
    assert t1.requests == 1 and t2.requests == 2
    assert np.allclose(first, 0.5 * x)  # zero history
    assert np.allclose(second, 0.75 * x)  # 0.5 * (0.5 x) + 0.5 x
    assert not np.array_equal(first, second)
    again, _ = proto.fuse_with_track(x, proto.SessionTrack(1, t1.vector.copy()))
    assert np.array_equal(again, second)
    with pytest.raises(proto.ProtocolError, match="another model"):
        proto.fuse_with_track(x, proto.SessionTrack(1, np.zeros(3, dtype=np.float32)))


def test_response_body_is_padded_never_cut():
    import json

    body = proto.response_body({"class": 3}, 100)
    assert len(body) == 100 and json.loads(body) == {"class": 3}
    assert proto.response_body({"class": 3}, 0) == b'{"class":3}'


@pytest.mark.parametrize("value, ok", [("car-1", True), ("fuk-17", True), ("a b", False), ("", False),
                                       ("x" * 129, False), ("semi;colon", False)])
def test_session_ids(value, ok):
    if ok:
        assert proto.check_session_id(value) == value
    else:
        with pytest.raises(proto.ProtocolError, match="X-Session"):
            proto.check_session_id(value)


def test_response_size_header():
    assert proto.parse_response_size(None) == 0 and proto.parse_response_size("1024") == 1024
    for bad in ("-1", "1e3", str(proto.MAX_RESPONSE_BYTES + 1)):
        with pytest.raises(proto.ProtocolError, match="X-Response-Size"):
            proto.parse_response_size(bad)


# --------------------------------------------------------------------------- state blobs


def _sessions() -> dict[str, proto.SessionTrack]:
    rng = np.random.default_rng(7)
    return {f"car-{i}": proto.SessionTrack(i + 1, rng.standard_normal(1024).astype(np.float32)) for i in range(3)}


def _blob(target: int = 0) -> tuple[bytes, dict]:
    meta = {"service": "drive-assist", "model": "sensor-fusion-mlp", "model_sha256": "ab" * 32, "sessions": 3}
    sections = {"sessions": proto.encode_sessions(_sessions()), "model": b"weights" * 100}
    pad = proto.padding_for_target(meta, {k: len(v) for k, v in sections.items()}, target)
    return proto.encode_state(meta, {**sections, "padding": proto.make_padding(pad)}), meta


def test_state_round_trip_keeps_every_session_bit_for_bit():
    blob, meta = _blob()
    decoded = proto.decode_state(blob)
    assert decoded.meta == meta
    assert bytes(decoded.sections["model"]) == b"weights" * 100
    back = decoded.sessions
    for sid, track in _sessions().items():
        assert back[sid].requests == track.requests
        assert np.array_equal(back[sid].vector, track.vector)
    # Layout: magic, version, and a SHA-256 trailer over everything before it.
    assert blob[:8] == b"TWINSTAT" and struct.unpack_from("<H", blob, 8)[0] == proto.STATE_VERSION
    assert blob[-32:] == hashlib.sha256(blob[:-32]).digest()


@pytest.mark.parametrize("target", [20_000, 20_001, 123_457, 4 * 1024 * 1024])
def test_padding_makes_the_blob_exactly_the_target_size(target):
    blob, _ = _blob(target)
    assert len(blob) == target
    assert len(proto.decode_state(blob).sections["padding"]) > 0


def test_padding_never_shrinks_a_blob_below_its_content():
    natural, _ = _blob(0)
    small, _ = _blob(100)
    assert len(small) == len(natural)


def test_streamed_chunks_equal_the_whole_blob():
    meta = {"service": "s"}
    sections = {"sessions": proto.encode_sessions({}), "padding": proto.make_padding(3 * 1024 * 1024 + 5)}
    total, pieces = proto.state_chunks(meta, sections)
    joined = b"".join(pieces)
    assert total == len(joined) == len(proto.encode_state(meta, sections))
    assert proto.decode_state(joined).sessions == {}


def test_bad_checksum_is_refused():
    blob = bytearray(_blob(50_000)[0])
    blob[len(blob) // 2] ^= 0x01  # one bit in the padding
    with pytest.raises(proto.StateFormatError, match="checksum"):
        proto.decode_state(bytes(blob))


def test_truncated_blob_is_refused():
    blob = _blob()[0]
    with pytest.raises(proto.StateFormatError, match="checksum"):
        proto.decode_state(blob[:-100])
    with pytest.raises(proto.StateFormatError, match="too short"):
        proto.decode_state(blob[:20])


def test_other_version_and_magic_are_refused():
    blob = bytearray(_blob()[0])
    other = bytearray(blob)
    struct.pack_into("<H", other, 8, proto.STATE_VERSION + 1)
    other[-32:] = hashlib.sha256(other[:-32]).digest()  # a valid checksum, a version we do not read
    with pytest.raises(proto.StateFormatError, match="version 2 is not supported"):
        proto.decode_state(bytes(other))
    blob[:8] = b"NOTSTATE"
    with pytest.raises(proto.StateFormatError, match="TWINSTAT"):
        proto.decode_state(bytes(blob))


def test_inconsistent_section_lengths_are_refused_even_with_a_good_checksum():
    blob = bytearray(_blob()[0])
    # Drop one byte from the middle and re-seal: the header's lengths no longer add up.
    del blob[100]
    blob[-32:] = hashlib.sha256(blob[:-32]).digest()
    with pytest.raises(proto.StateFormatError):
        proto.decode_state(bytes(blob))


def test_padding_is_seeded_and_cheap_to_make_large():
    a, b = proto.make_padding(3_000_000), proto.make_padding(3_000_000)
    assert a == b and len(a) == 3_000_000
    assert proto.make_padding(0) == b""
    assert len(set(a[:4096])) > 200  # random-looking, not zeros


# --------------------------------------------------------------------------- load generator options


def test_arrivals_are_poisson_and_seeded():
    a = arrival_offsets(100.0, 100.0, seed=3)
    assert a == arrival_offsets(100.0, 100.0, seed=3) and a != arrival_offsets(100.0, 100.0, seed=4)
    assert all(0 <= t < 100.0 for t in a) and a == sorted(a)
    # 10,000 expected; Poisson sd is 100, so 5 sd either way.
    assert 9500 < len(a) < 10500
    gaps = np.diff(a)
    assert np.mean(gaps) == pytest.approx(0.01, rel=0.05)
    assert np.std(gaps) == pytest.approx(0.01, rel=0.05)  # exponential: sd equals the mean


def test_load_options_are_checked():
    good = dict(host="127.0.0.1", port=8080, rate_per_s=10, duration_s=1, request_size=10, response_size=10,
                region="fuk", service="drive-assist")
    LoadConfig(**good).check()
    for change, match in ((dict(rate_per_s=0), "--rate"), (dict(duration_s=-1), "--duration"),
                          (dict(region="Fukuoka"), "site id"), (dict(service="x;y"), "service id"),
                          (dict(port=0), "port")):
        with pytest.raises(proto.ProtocolError if "id" in match else LoadError, match=match):
            LoadConfig(**{**good, **change}).check()
    assert parse_target("[::1]:9") == ("::1", 9)
    with pytest.raises(LoadError, match="HOST:PORT"):
        parse_target("nohost")
