"""The workload container image: its name and the hashes of what it is built from.

``scripts/build-image.sh`` builds it in two layers, never pulling from a registry:

- the base image ``localhost/twin-workload-base:<base key>``: Debian minbase +
  python3 (debootstrap) and a venv at :data:`VENV_IN_IMAGE` holding the
  project's run-time dependencies, pinned to the versions in the twin's own
  ``.venv`` (so the container runs the code against what the tests ran it);
- the image ``localhost/twin-workload:<source hash>``: the base plus the wheel
  built from this checkout and the ONNX models it builds.

The source hash covers every file that goes into the wheel plus the build
script, so a code change gives a new tag and an unchanged tree finds its image
with one ``podman image exists``. Only stdlib and ``packaging`` here: the build
script calls ``python -m twin.workloads.image`` before anything is installed
in the image.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from twin.errors import TwinError

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_REPOSITORY = "localhost/twin-workload"
BASE_REPOSITORY = "localhost/twin-workload-base"
VENV_IN_IMAGE = "/opt/twin/venv"
#: Where the server looks for models when it runs as root (twin.workloads.models.default_models_dir).
MODELS_IN_IMAGE = "/var/lib/twin/models"
#: Debian suite and packages debootstrap puts in the base (minbase variant).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
#: Bump when build_base in scripts/build-image.sh changes what the base holds
#: (edits elsewhere in the script only rebuild the code layer).
BASE_RECIPE_VERSION = 1
#: Distribution and extras whose dependencies the image needs at run time.
PROJECT_DIST = "apn-twin"
IMAGE_EXTRAS = ("workloads",)
#: Directories (and single files) of the checkout that make up the wheel.
SOURCE_DIRS = ("twin", "controllers")
SOURCE_FILES = ("pyproject.toml", "README.md", "scripts/build-image.sh")
HASH_LENGTH = 12
_SKIP_PARTS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


class ImageError(TwinError):
    """The workload image is missing or cannot be described."""


def source_files(repo: Path = REPO_ROOT) -> list[Path]:
    """Every file whose content goes into the image's code layer, sorted by path."""
    files = [repo / name for name in SOURCE_FILES if (repo / name).is_file()]
    for top in SOURCE_DIRS:
        for path in (repo / top).rglob("*"):
            rel = path.relative_to(repo)
            if path.is_file() and not _SKIP_PARTS & set(rel.parts) and path.suffix not in _SKIP_SUFFIXES:
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(repo).as_posix())


def _digest(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        # Length-prefixed so that moving bytes between two chunks changes the hash.
        h.update(len(chunk).to_bytes(8, "big"))
        h.update(chunk)
    return h.hexdigest()[:HASH_LENGTH]


def source_hash(repo: Path = REPO_ROOT) -> str:
    """Hash of the paths and contents of :func:`source_files` plus the base key."""
    chunks = [base_key(repo).encode()]
    for path in source_files(repo):
        chunks.append(path.relative_to(repo).as_posix().encode())
        chunks.append(path.read_bytes())
    return _digest(chunks)


def pinned_requirements(dist: str = PROJECT_DIST, extras: tuple[str, ...] = IMAGE_EXTRAS) -> list[str]:
    """``name==version`` for the run-time dependency closure of ``dist[extras]``, as installed here.

    Raises:
        ImageError: a dependency is not installed in this environment.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def requires(name: str, with_extras: tuple[str, ...]) -> list[Requirement]:
        try:
            raw = metadata.requires(name) or []
        except metadata.PackageNotFoundError as err:
            raise ImageError(
                f"image: {name} is not installed in {sys.prefix}; fix: run sudo scripts/install.sh"
            ) from err
        found = []
        for line in raw:
            req = Requirement(line)
            envs = [{"extra": e} for e in with_extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                found.append(req)
        return found

    pins: dict[str, str] = {}
    todo = [(dist, extras)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, with_extras = todo.pop()
        if (canonicalize_name(name), with_extras) in seen:
            continue
        seen.add((canonicalize_name(name), with_extras))
        for req in requires(name, with_extras):
            key = canonicalize_name(req.name)
            try:
                pins[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError as err:
                raise ImageError(
                    f"image: {req.name} (needed by {name}) is not installed in {sys.prefix}; "
                    "fix: run sudo scripts/install.sh"
                ) from err
            todo.append((req.name, tuple(sorted(req.extras))))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def base_key(repo: Path = REPO_ROOT) -> str:
    """Hash of what the base image is made of: suite, packages, pinned dependencies, recipe version."""
    chunks = [BASE_SUITE.encode(), " ".join(BASE_PACKAGES).encode(), "\n".join(pinned_requirements()).encode(),
              str(BASE_RECIPE_VERSION).encode()]
    return _digest(chunks)


def image_ref(repo: Path = REPO_ROOT) -> str:
    """``localhost/twin-workload:<source hash>``: the image this checkout's code runs in."""
    return f"{IMAGE_REPOSITORY}:{source_hash(repo)}"


def base_ref(repo: Path = REPO_ROOT) -> str:
    return f"{BASE_REPOSITORY}:{base_key(repo)}"


_REF = re.compile(r"^localhost/[a-z0-9][a-z0-9._-]*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def validate_ref(ref: str) -> str:
    """Only local image references: nothing is ever pulled from a registry.

    Raises:
        ImageError: ``ref`` is not ``localhost/NAME:TAG``.
    """
    if not _REF.match(ref):
        raise ImageError(f"image: {ref!r} is not a local image reference; fix: use localhost/NAME:TAG")
    return ref


def image_exists(ref: str, podman: str = "podman") -> bool:
    """Whether podman has the image ``ref``.

    Raises:
        ImageError: podman is not installed (said in one line, not as a traceback).
    """
    if shutil.which(podman) is None:
        raise ImageError(f"image: {podman} not found, so no workload can run here; fix: sudo scripts/install.sh "
                         "(or leave the workloads out, e.g. twin up --check --no-migration-check)")
    proc = subprocess.run([podman, "image", "exists", validate_ref(ref)], capture_output=True)
    return proc.returncode == 0


def require_image(repo: Path = REPO_ROOT) -> str:
    """The image for this checkout, which must have been built.

    Raises:
        ImageError: it is not there (the code changed since the last build, or it was never built).
    """
    ref = image_ref(repo)
    if not image_exists(ref):
        raise ImageError(
            f"image: {ref} (the workload image for this checkout) is not built; "
            "fix: sudo scripts/build-image.sh (or sudo scripts/install.sh)"
        )
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.workloads.image", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ref", action="store_true", help="print the image reference for this checkout")
    group.add_argument("--base-ref", action="store_true", help="print the base image reference")
    group.add_argument("--requirements", action="store_true", help="print the pinned run-time requirements")
    group.add_argument("--sources", action="store_true", help="print the files the code layer is built from")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout (or copy of its sources) to describe")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.ref:
            print(image_ref(repo))
        elif args.base_ref:
            print(base_ref(repo))
        elif args.requirements:
            print("\n".join(pinned_requirements()))
        else:
            print("\n".join(p.relative_to(repo).as_posix() for p in source_files(repo)))
    except TwinError as err:
        print(err, file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
