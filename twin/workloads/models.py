"""The small real ONNX models the inference services run, built here from a fixed seed.

Nothing is downloaded: each model is written with the ``onnx`` helper API and
numpy weights from a fixed seed, so every machine builds the same bytes and the
files are named by their content hash (``NAME-<sha256 prefix>.onnx``). A
manifest ``models.json`` in the directory maps names to files; building again
only rewrites what is missing or changed.

- ``sensor-fusion-mlp``: 64 fused objects x 16 features -> MLP 1024-512-256-8 ->
  8 manoeuvre-hint logits. About 0.66 M weights (2.6 MB), so its weights are the
  bulk of the drive-assist service's state.
- ``farm-cnn``: one 3x128x128 image -> four VGG-like stages (conv3x3+ReLU
  layers, then 2x2 max pool) -> global average pool -> 10 classes. Few weights, real compute per request
  (tens of ms on one core; measured in benchmarks/inference.py).
- ``echo``: no model (the server answers with a digest of the request).

Build from the installer or by hand::

    python -m twin.workloads.models --build DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from twin.errors import TwinError
from twin.workloads.protocol import MODEL_INPUT_SHAPES

SEED = 20250612  # the day the Fukuoka-Osaka APN demonstration was reported (facts.md)
OPSET = 17
IR_VERSION = 8  # what ONNX Runtime 1.18+ reads without complaint
MANIFEST = "models.json"
MANIFEST_FORMAT = 1
BUILT_MODELS = ("sensor-fusion-mlp", "farm-cnn")

MLP_WIDTHS = (1024, 512, 256, 8)
# Output channels of the conv3x3+ReLU layers of each stage (a 2x2 max pool ends
# each stage), VGG-like; sized so that one image costs tens of ms on one core
# here (about 1.5 G multiply-adds; benchmarks/inference.py has the figure).
CNN_STAGES = ((48, 48), (96, 96), (192, 192), (256,))
CNN_CLASSES = 10


class ModelError(TwinError):
    """A model file is missing, changed or cannot be built."""


def default_models_dir() -> Path:
    """``/var/lib/twin/models`` for root (the installer's place), else ``~/.cache/twin/models``."""
    if os.geteuid() == 0:
        return Path("/var/lib/twin/models")
    return Path.home() / ".cache" / "twin" / "models"


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _build_mlp() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    shape = MODEL_INPUT_SHAPES["sensor-fusion-mlp"]
    inits, nodes = [], []
    nodes.append(helper.make_node("Reshape", ["objects", "flat_shape"], ["h0"]))
    inits.append(numpy_helper.from_array(np.array([1, MLP_WIDTHS[0]], dtype=np.int64), "flat_shape"))
    prev = "h0"
    for i, (fan_in, fan_out) in enumerate(zip(MLP_WIDTHS, MLP_WIDTHS[1:])):
        inits.append(numpy_helper.from_array(_he(rng, (fan_in, fan_out), fan_in), f"w{i}"))
        inits.append(numpy_helper.from_array((rng.standard_normal(fan_out) * 0.01).astype(np.float32), f"b{i}"))
        last = i == len(MLP_WIDTHS) - 2
        out = "logits" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            prev = f"h{i + 1}"
    graph = helper.make_graph(
        nodes, "sensor_fusion_mlp",
        [helper.make_tensor_value_info("objects", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, MLP_WIDTHS[-1]])],
        inits,
    )
    return _serialise(graph)


def _build_cnn() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED + 1)
    shape = MODEL_INPUT_SHAPES["farm-cnn"]
    inits, nodes = [], []
    prev, c_in = "image", shape[1]
    for s, stage in enumerate(CNN_STAGES):
        for j, c_out in enumerate(stage):
            k = f"{s}_{j}"
            inits.append(numpy_helper.from_array(_he(rng, (c_out, c_in, 3, 3), c_in * 9), f"k{k}"))
            inits.append(numpy_helper.from_array(np.zeros(c_out, dtype=np.float32), f"kb{k}"))
            nodes.append(helper.make_node("Conv", [prev, f"k{k}", f"kb{k}"], [f"c{k}"], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
            prev, c_in = f"r{k}", c_out
        nodes.append(helper.make_node("MaxPool", [prev], [f"p{s}"], kernel_shape=[2, 2], strides=[2, 2]))
        prev = f"p{s}"
    c_last = c_in
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"]))
    inits.append(numpy_helper.from_array(_he(rng, (c_last, CNN_CLASSES), c_last), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(CNN_CLASSES, dtype=np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"]))
    graph = helper.make_graph(
        nodes, "farm_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CNN_CLASSES])],
        inits,
    )
    return _serialise(graph)


def _serialise(graph) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="apn-twin", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


_BUILDERS = {"sensor-fusion-mlp": _build_mlp, "farm-cnn": _build_cnn}


def model_bytes(name: str) -> bytes:
    """The serialised model ``name`` (deterministic for a given seed and onnx version)."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ModelError(f"model {name!r} cannot be built; use one of {', '.join(BUILT_MODELS)}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_models(directory: Path | str | None = None) -> dict[str, Path]:
    """Write every model (once) into ``directory`` and return ``{name: path}``.

    Idempotent: files are content-named, so an existing file with the right name
    and hash is kept; the manifest is rewritten atomically only when it changes.

    Raises:
        ModelError: the directory cannot be created or written.
    """
    directory = Path(directory) if directory is not None else default_models_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"{directory}: cannot create the models directory ({err.strerror}); "
                         "pass a writable --models-dir") from None
    entries: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    for name in BUILT_MODELS:
        data = model_bytes(name)
        digest = hashlib.sha256(data).hexdigest()
        path = directory / f"{name}-{digest[:16]}.onnx"
        try:
            if not (path.is_file() and _file_sha256(path) == digest):
                _write_atomic(path, data)
        except OSError as err:
            raise ModelError(f"{path}: cannot write the model ({err.strerror}); pass a writable --models-dir") from None
        entries[name] = {"file": path.name, "sha256": digest, "bytes": len(data),
                         "input_shape": list(MODEL_INPUT_SHAPES[name])}
        paths[name] = path
    manifest = json.dumps({"format": MANIFEST_FORMAT, "seed": SEED, "opset": OPSET, "models": entries},
                          indent=2, sort_keys=True).encode() + b"\n"
    manifest_path = directory / MANIFEST
    try:
        if not (manifest_path.is_file() and manifest_path.read_bytes() == manifest):
            _write_atomic(manifest_path, manifest)
    except OSError as err:
        raise ModelError(f"{manifest_path}: cannot write the manifest ({err.strerror}); "
                         "pass a writable --models-dir") from None
    # Files of an older build (another seed or onnx version) are ours by name: remove them.
    for name, path in paths.items():
        for stale in directory.glob(f"{name}-*.onnx"):
            if stale != path and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}\.onnx", stale.name):
                stale.unlink(missing_ok=True)
    return paths


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_model(directory: Path | str, name: str) -> tuple[Path, str]:
    """The file of model ``name`` in a built directory and its SHA-256, checked against the manifest.

    Raises:
        ModelError: no manifest, the model is not in it, or the file is missing or changed.
    """
    directory = Path(directory)
    fix = f"build it with: python -m twin.workloads.models --build {directory}"
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["models"][name]
        path = directory / entry["file"]
        expected = entry["sha256"]
    except FileNotFoundError:
        raise ModelError(f"{manifest_path}: no models built there; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{manifest_path}: model {name!r} not found or manifest unreadable ({err!r}); {fix}") from None
    if not path.is_file():
        raise ModelError(f"{path}: model file missing; {fix}")
    actual = _file_sha256(path)
    if actual != expected:
        raise ModelError(f"{path}: SHA-256 {actual[:16]} differs from the manifest's {expected[:16]}; {fix}")
    return path, actual


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.workloads.models",
                                     description="Build the twin's ONNX models (idempotent).")
    parser.add_argument("--build", metavar="DIR", nargs="?", const="", required=True,
                        help=f"directory to write (default {default_models_dir()})")
    args = parser.parse_args(argv)
    try:
        paths = build_models(args.build or None)
    except TwinError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
