"""The inference protocol's pure parts: names, request -> model input, session tracks, state blobs.

Shared by the server, the load generator, migration code and the unit tests; no
sockets, no ONNX Runtime. The wire protocol itself is documented in
docs/inference-protocol.md; this module is its executable half.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from twin.errors import TwinError

# --------------------------------------------------------------------------- names

MODEL_NAMES = ("sensor-fusion-mlp", "farm-cnn", "echo")

#: Input tensor shape of each real model (batch of one). ``echo`` has no model.
MODEL_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "sensor-fusion-mlp": (1, 64, 16),  # 64 fused objects x 16 features
    "farm-cnn": (1, 3, 128, 128),  # one RGB image
}
#: Models whose answer depends on per-session history (``X-Session``).
STATEFUL_MODELS = frozenset({"sensor-fusion-mlp"})

H_SESSION = "X-Session"
H_RESPONSE_SIZE = "X-Response-Size"
H_SITE = "X-Site"
H_SERVICE = "X-Service"
H_INSTANCE = "X-Instance"
H_SERVICE_TIME_US = "X-Service-Time-Us"
H_SERVICE_CPU_US = "X-Service-Cpu-Us"
H_MAX_RATE = "X-Max-Rate"  # GET /state: pace the answer at most this many bytes/s

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_SESSION_ID_CHARS = 128
SO_MAX_PACING_RATE = 47  # Linux socket option; Python's socket module does not name it
MIN_PACING_BYTES_PER_S = 1000  # below this a 4 MiB state would take over an hour: a unit mistake
MAX_PACING_BYTES_PER_S = 2**32 - 1  # the kernel's SO_MAX_PACING_RATE is a u32 on 64-bit too

# Same rule as twin.model.schema (ids reach process and interface names); kept
# here so the server does not pull in pydantic at start-up.
_SITE_ID_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,3}[a-z0-9])?$")
_SERVICE_ID_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?$")
_SESSION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,%d}$" % MAX_SESSION_ID_CHARS)


class ProtocolError(TwinError):
    """A request, header or state blob does not follow the inference protocol."""


class StateFormatError(ProtocolError):
    """A state blob is truncated, of another version, or fails its checksum."""


def check_site_id(value: str) -> str:
    """Return ``value`` if it is a valid site id, else raise :class:`ProtocolError`."""
    if not _SITE_ID_RE.match(value):
        raise ProtocolError(f"site id {value!r} is not allowed; use 1-5 lowercase letters, digits or '-', "
                            "starting with a letter (as in the topology file)")
    return value


def check_service_id(value: str) -> str:
    """Return ``value`` if it is a valid service id, else raise :class:`ProtocolError`."""
    if not _SERVICE_ID_RE.match(value):
        raise ProtocolError(f"service id {value!r} is not allowed; use 1-12 lowercase letters, digits or '-', "
                            "starting with a letter (as in the scenario file)")
    return value


def check_model_name(value: str) -> str:
    if value not in MODEL_NAMES:
        raise ProtocolError(f"model {value!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    return value


def check_session_id(value: str) -> str:
    """Session ids are echoed in JSON and stored in state blobs: keep them short and plain."""
    if not _SESSION_RE.match(value):
        raise ProtocolError(f"{H_SESSION} {value[:40]!r} is not allowed; use 1-{MAX_SESSION_ID_CHARS} "
                            "characters of letters, digits, '.', '_', ':' or '-'")
    return value


def _int_header(name: str, value: str | None, low: int, high: int, what: str, unit: str = "") -> int:
    """An integer header in low..high; absent or empty means 0."""
    if value is None or value == "":
        return 0
    try:
        number = int(value)
    except ValueError:
        raise ProtocolError(f"{name} {value[:20]!r} is not an integer; send {what}") from None
    if not low <= number <= high:
        raise ProtocolError(f"{name} {number} is out of range; use {low}..{high}{unit}")
    return number


def parse_response_size(value: str | None) -> int:
    """``X-Response-Size`` as an int in 0..MAX_RESPONSE_BYTES; absent means 0 (natural size)."""
    return _int_header(H_RESPONSE_SIZE, value, 0, MAX_RESPONSE_BYTES, "a byte count")


def parse_max_rate(value: str | None) -> int:
    """``X-Max-Rate`` in bytes/s; absent or empty means 0 (unpaced)."""
    return _int_header(H_MAX_RATE, value, MIN_PACING_BYTES_PER_S, MAX_PACING_BYTES_PER_S, "bytes per second",
                       " bytes/s")


# --------------------------------------------------------------------------- request -> model input


def derive_input(body: bytes | bytearray | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """The model input for a request body: deterministic, and every byte counts.

    The body's bytes are laid out row-major over ``n = prod(shape)`` slots: a body
    longer than ``n`` is folded (byte sums per slot, mod 256), a shorter one is
    repeated to fill. Each byte value ``b`` becomes ``b / 127.5 - 1`` in [-1, 1].
    An empty body gives all -1. Real clients would send a serialised tensor; the
    twin's clients send sized opaque bytes, and this keeps the mapping cheap
    (numpy, no per-byte Python) and reproducible on any instance.

    >>> derive_input(b"\\x00\\xff", (1, 3)).tolist()
    [[-1.0, 1.0, -1.0]]
    >>> derive_input(b"\\x01\\x02\\x03\\x04", (2,)).tolist()  # folded: (1+3, 2+4)
    [-0.9686274528503418, -0.9529411792755127]
    """
    n = int(np.prod(shape))
    raw = np.frombuffer(body, dtype=np.uint8)
    if raw.size == 0:
        slots = np.zeros(n, dtype=np.uint8)
    elif raw.size <= n:
        slots = np.resize(raw, n)  # repeats the body
    else:
        rows = -(-raw.size // n)
        padded = np.zeros(rows * n, dtype=np.uint8)
        padded[: raw.size] = raw
        slots = (padded.reshape(rows, n).sum(axis=0, dtype=np.uint64) % 256).astype(np.uint8)
    return (slots.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).reshape(shape)


def request_digest(body: bytes | bytearray | memoryview) -> str:
    """What the ``echo`` service answers: a short digest proving it read every byte."""
    return hashlib.sha256(body).hexdigest()[:16]


# --------------------------------------------------------------------------- session tracks

TRACK_DECAY = np.float32(0.5)


@dataclass
class SessionTrack:
    """Per-session history of the stateful service: an exponential moving average of inputs."""

    requests: int
    vector: np.ndarray  # float32, flat, one value per input slot


def fuse_with_track(x: np.ndarray, track: SessionTrack | None) -> tuple[np.ndarray, SessionTrack]:
    """Model input and the session's next track for input ``x``.

    The model sees ``decay * track + (1 - decay) * x`` (a new session's track is
    zero), and that fused list becomes the track: like a tracker smoothing object
    positions over frames, so the same request gets a different answer after a
    different history. Pure, so a migrated track gives the same answer anywhere.
    """
    flat = x.reshape(-1).astype(np.float32, copy=False)
    if track is None:
        prev = np.zeros_like(flat)
        count = 0
    else:
        if track.vector.size != flat.size:
            raise ProtocolError(f"session track has {track.vector.size} values, input has {flat.size}; "
                                "the state was exported by another model")
        prev = track.vector
        count = track.requests
    fused = (TRACK_DECAY * prev + (np.float32(1.0) - TRACK_DECAY) * flat).astype(np.float32)
    return fused.reshape(x.shape), SessionTrack(requests=count + 1, vector=fused)


# --------------------------------------------------------------------------- response body


def response_body(answer: dict, size: int) -> bytes:
    """JSON answer padded with spaces to ``size`` bytes (JSON allows trailing whitespace).

    Never cut: when the answer is longer than ``size`` it is sent whole.
    """
    data = json.dumps(answer, separators=(",", ":"), sort_keys=True).encode()
    if len(data) < size:
        data += b" " * (size - len(data))
    return data


# --------------------------------------------------------------------------- state blobs
#
# Layout (integers little-endian):
#   magic     8 bytes  b"TWINSTAT"
#   version   u16      STATE_VERSION
#   hdr_len   u32
#   header    hdr_len bytes of UTF-8 JSON: {"service", "model", "model_sha256",
#             "site", "instance", "exported_unix", "sessions", "sections": [{"name", "length"}, ...]}
#   sections  concatenated in the order the header lists them: "sessions", "model", "padding"
#   checksum  32 bytes  SHA-256 of every byte before it
#
# sessions section: u32 count, then per session: u16 id_len, id (UTF-8), u64 requests,
# u32 n, n float32 values.

STATE_MAGIC = b"TWINSTAT"
STATE_VERSION = 1
_PREFIX = struct.Struct("<8sHI")
_CHECKSUM_BYTES = 32
SECTION_ORDER = ("sessions", "model", "padding")


def encode_sessions(sessions: dict[str, SessionTrack]) -> bytes:
    parts = [struct.pack("<I", len(sessions))]
    for sid, track in sessions.items():
        raw_id = sid.encode()
        vec = np.ascontiguousarray(track.vector, dtype="<f4")
        parts.append(struct.pack("<H", len(raw_id)))
        parts.append(raw_id)
        parts.append(struct.pack("<QI", track.requests, vec.size))
        parts.append(vec.tobytes())
    return b"".join(parts)


def decode_sessions(data: bytes | memoryview) -> dict[str, SessionTrack]:
    view = memoryview(data)
    try:
        (count,) = struct.unpack_from("<I", view, 0)
        pos = 4
        out: dict[str, SessionTrack] = {}
        for _ in range(count):
            (id_len,) = struct.unpack_from("<H", view, pos)
            pos += 2
            sid = bytes(view[pos:pos + id_len]).decode()
            pos += id_len
            requests, n = struct.unpack_from("<QI", view, pos)
            pos += 12
            if pos + 4 * n > len(view):
                raise struct.error("vector runs past the section")
            vec = np.frombuffer(view[pos:pos + 4 * n], dtype="<f4").astype(np.float32)
            pos += 4 * n
            out[sid] = SessionTrack(requests=requests, vector=vec)
    except (struct.error, UnicodeDecodeError) as err:
        raise StateFormatError(f"state sessions section is malformed ({err}); export the state again") from None
    if pos != len(view):
        raise StateFormatError(f"state sessions section has {len(view) - pos} trailing bytes; export the state again")
    return out


@dataclass
class StateBlob:
    """A decoded state blob. ``sections`` are views into the received bytes (no copies)."""

    meta: dict
    sections: dict[str, memoryview] = field(default_factory=dict)

    @property
    def sessions(self) -> dict[str, SessionTrack]:
        return decode_sessions(self.sections.get("sessions", memoryview(b"\0\0\0\0")))


def _header_bytes(meta: dict, section_lengths: dict[str, int]) -> bytes:
    header = dict(meta)
    header["sections"] = [{"name": name, "length": int(section_lengths[name])}
                          for name in SECTION_ORDER if name in section_lengths]
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def padding_for_target(meta: dict, section_lengths: dict[str, int], target_bytes: int) -> int:
    """Padding length that makes the whole blob exactly ``target_bytes`` long (0 if it is already longer).

    The header carries the padding length as decimal digits, so the header grows
    with it; iterate until the fixed point (at most a few rounds).
    """
    padding = 0
    for _ in range(8):
        total = (_PREFIX.size + len(_header_bytes(meta, {**section_lengths, "padding": padding}))
                 + sum(v for k, v in section_lengths.items() if k != "padding") + padding + _CHECKSUM_BYTES)
        if total == target_bytes:
            return padding
        new = padding + (target_bytes - total)
        if new < 0:
            return 0
        padding = new
    return padding


def state_chunks(meta: dict, sections: dict[str, bytes | memoryview]) -> tuple[int, Iterator[bytes | memoryview]]:
    """Total length and the pieces of a state blob, in order; the last piece is the checksum.

    Pieces are the caller's buffers (no copy of a 200 MB padding), so a server can
    stream them straight to a socket.
    """
    lengths = {name: len(buf) for name, buf in sections.items()}
    unknown = set(lengths) - set(SECTION_ORDER)
    if unknown:
        raise ProtocolError(f"unknown state sections {sorted(unknown)}; use {SECTION_ORDER}")
    header = _header_bytes(meta, lengths)
    prefix = _PREFIX.pack(STATE_MAGIC, STATE_VERSION, len(header))
    total = len(prefix) + len(header) + sum(lengths.values()) + _CHECKSUM_BYTES

    def pieces() -> Iterator[bytes | memoryview]:
        digest = hashlib.sha256()
        for piece in _pieces(prefix, header, sections):
            digest.update(piece)
            yield piece
        yield digest.digest()

    return total, pieces()


def _pieces(prefix: bytes, header: bytes, sections: dict[str, bytes | memoryview]) -> Iterable[bytes | memoryview]:
    yield prefix
    yield header
    for name in SECTION_ORDER:
        if name in sections:
            view = memoryview(sections[name])
            step = 1 << 20  # 1 MiB pieces keep socket writes and hashing smooth
            for start in range(0, len(view), step):
                yield view[start:start + step]


def encode_state(meta: dict, sections: dict[str, bytes | memoryview]) -> bytes:
    """The whole blob as one bytes object (tests and small states)."""
    _, pieces = state_chunks(meta, sections)
    return b"".join(pieces)


def decode_state(data: bytes | bytearray | memoryview) -> StateBlob:
    """Parse and verify a state blob.

    Raises:
        StateFormatError: wrong magic, unsupported version, truncated, bad checksum,
            or section lengths that do not add up.
    """
    view = memoryview(data)
    if len(view) < _PREFIX.size + _CHECKSUM_BYTES:
        raise StateFormatError(f"state blob is {len(view)} bytes, too short to be one; send a blob from GET /state")
    magic, version, hdr_len = _PREFIX.unpack_from(view, 0)
    if magic != STATE_MAGIC:
        raise StateFormatError("state blob does not start with b'TWINSTAT'; send a blob from GET /state")
    if version != STATE_VERSION:
        raise StateFormatError(f"state blob version {version} is not supported (this server reads "
                               f"{STATE_VERSION}); export it from a server of the same version")
    body_end = len(view) - _CHECKSUM_BYTES
    if hashlib.sha256(view[:body_end]).digest() != bytes(view[body_end:]):
        raise StateFormatError("state blob checksum (SHA-256) does not match; it was corrupted or cut, send it again")
    start = _PREFIX.size
    if start + hdr_len > body_end:
        raise StateFormatError("state blob header runs past its end; export the state again")
    try:
        meta = json.loads(bytes(view[start:start + hdr_len]))
        sections_list = meta.pop("sections")
        pos = start + hdr_len
        sections: dict[str, memoryview] = {}
        for entry in sections_list:
            name, length = str(entry["name"]), int(entry["length"])
            if name not in SECTION_ORDER or length < 0:
                raise ValueError(f"bad section {name!r}")
            sections[name] = view[pos:pos + length]
            pos += length
    except (ValueError, KeyError, TypeError) as err:
        raise StateFormatError(f"state blob header is malformed ({err}); export the state again") from None
    if pos != body_end:
        raise StateFormatError(f"state blob sections cover {pos} bytes but the blob has {body_end}; "
                               "export the state again")
    return StateBlob(meta=meta, sections=sections)


def make_padding(length: int, seed: int = 0) -> bytearray:
    """Opaque filler for the state's padding section: 1 MiB of seeded random bytes, repeated.

    Random rather than zeros so that nothing on the path could compress it away;
    repeated so that 200 MB take milliseconds, not seconds, to make.
    """
    if length <= 0:
        return bytearray()
    block = np.random.default_rng(seed).bytes(min(length, 1 << 20))
    buf = bytearray(block) * -(-length // len(block))
    del buf[length:]  # truncating the tail does not copy
    return buf
