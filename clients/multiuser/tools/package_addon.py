#!/usr/bin/env python3
"""Makes an installable Multi-User zip that works with replication-serve.

Takes an official Multi-User release, unchanged, and writes a zip to
install in Blender (Preferences > Add-ons > Install, or for the 4.2+
extension, Install from Disk) in which the add-on's ``replication`` library
is this project's drop-in package, with what it needs:

- Multi-User 0.5.x (a folder or zip holding ``multi_user/``, Blender 2.82 to
  3.6): the package goes where the add-on looks for its library
  (``multi_user/libs/replication/replication``), with ``replication_client``
  beside it, and with pyzmq, msgpack and deepdiff built for one Blender's
  Python (``--python``, ``--platform``). With ``--no-deps`` they are left
  out and the add-on installs them with pip when it is first enabled, as it
  always has (that needs internet access).
- Multi-User 0.6.x (an extension with ``blender_manifest.toml``, Blender
  4.3 or newer): the ``replication`` wheel is replaced with this package's
  wheel and ``replication_client``'s, and msgpack wheels (one version) are
  added for every platform the manifest names and every Python the add-on
  ships pyzmq for; the manifest's ``wheels`` list says so. The manifest
  stays at the root of the zip, where Blender's "Install from Disk" looks
  for it. The add-on's other wheels (pyzmq, and deepdiff, which its own
  code imports) are kept as they are.

The add-on's own code is copied byte for byte. Usage::

    python3 clients/multiuser/tools/package_addon.py SOURCE -o OUT.zip [options]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent  # clients/multiuser
CLIENT_ROOT = PACKAGE_ROOT.parent / "python"  # clients/python
LEGACY_BINARY_DEPS = ["pyzmq", "msgpack"]
LEGACY_PURE_DEPS = ["deepdiff==5.7.0", "ordered-set==4.0.2"]
"""What 0.5.x needs besides the two packages of this project: the add-on
itself imports deepdiff (its scene and collection deltas), and 0.5.x was
written against deepdiff 5.7, which needs exactly this ordered-set (only
published as source, so it is installed for any Python, not built for
one)."""
PLATFORMS = {
    "linux": "manylinux2014_x86_64",
    "windows": "win_amd64",
    "macos": "macosx_10_15_universal2",
    "macos-arm64": "macosx_11_0_arm64",
}
MSGPACK_VERSION = "1.2.4"
"""The msgpack shipped in an extension, the same on every platform: recent
releases have a wheel for each Blender platform and Python 3.11 to 3.13
(for macOS one per architecture, no longer universal2)."""
BLENDER_PLATFORMS = {
    "linux-x64": "manylinux_2_28_x86_64",
    "windows-x64": "win_amd64",
    "macos-x64": "macosx_11_0_x86_64",
    "macos-arm64": "macosx_11_0_arm64",
}
"""pip's platform for each of the extension platforms Blender names (the
manifest's ``platforms``). pip also takes wheels for older glibc or macOS
releases than the one named; Blender 4.2 and newer need macOS 11."""


class PackagingError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            addon = find_addon(Path(args.source), Path(tmp))
            if (addon / "blender_manifest.toml").is_file():
                files = package_extension(addon, Path(tmp) / "build", args)
            else:
                files = package_legacy(addon, Path(tmp) / "build", args)
            write_zip(files, Path(args.output))
    except PackagingError as e:
        print(f"package_addon: {e}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", help="the Multi-User release: a folder holding multi_user/, or its zip"
    )
    parser.add_argument("-o", "--output", required=True, help="the zip to write")
    parser.add_argument(
        "--python",
        help="0.5.x: the Python version of the Blender it is for (Blender 3.x: 3.10; "
        "Debian's 3.4: 3.11; default: this Python's)",
    )
    parser.add_argument(
        "--platform",
        choices=sorted(PLATFORMS),
        help="0.5.x: the platform of the Blender it is for (default: this machine's)",
    )
    parser.add_argument(
        "--no-deps",
        action="store_true",
        help="0.5.x: leave out pyzmq, msgpack and deepdiff (the add-on installs them itself "
        "on first start, with internet access)",
    )
    parser.add_argument(
        "--server-binary",
        help="0.5.x: also ship this replication-serve binary, for hosting from Blender "
        "without a replication-serve on PATH",
    )
    return parser.parse_args(argv)


def find_addon(source: Path, tmp: Path) -> Path:
    """The ``multi_user`` folder of the release."""
    if source.is_file() and zipfile.is_zipfile(source):
        unpacked = tmp / "source"
        with zipfile.ZipFile(source) as z:
            for name in z.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise PackagingError(f"{source}: unsafe path {name!r} in the zip")
            z.extractall(unpacked)
        source = unpacked
    if not source.is_dir():
        raise PackagingError(f"{source} is neither a folder nor a zip")
    candidates = [source] if (source / "__init__.py").is_file() else []
    candidates += [p.parent for p in sorted(source.glob("*/__init__.py"))]
    candidates += [p.parent for p in sorted(source.glob("*/*/__init__.py"))]
    for candidate in candidates:
        init = (candidate / "__init__.py").read_text(errors="replace")
        if "Multi-User" in init or (candidate / "blender_manifest.toml").is_file():
            return candidate
    raise PackagingError(f"no Multi-User add-on (multi_user/__init__.py) in {source}")


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise PackagingError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def copy_package(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def package_legacy(addon: Path, build: Path, args: argparse.Namespace) -> dict[str, Path]:
    """0.5.x: the add-on puts ``libs`` and ``libs/replication`` first on
    sys.path and imports its dependencies from there."""
    files = collect(addon, "multi_user")
    libs = build / "libs"
    library = libs / "replication"
    copy_package(PACKAGE_ROOT / "src" / "replication", library / "replication")
    copy_package(CLIENT_ROOT / "src" / "replication_client", libs / "replication_client")
    requirements = [*LEGACY_BINARY_DEPS, LEGACY_PURE_DEPS[0]]
    (library / "requirements.txt").write_text("\n".join(requirements) + "\n")
    if args.server_binary:
        add_server_binary(Path(args.server_binary), library / "replication" / "bin")
    if not args.no_deps:
        python = args.python or f"{sys.version_info[0]}.{sys.version_info[1]}"
        target = ["--target", str(libs), "--only-binary=:all:", "--python-version", python]
        target += ["--implementation", "cp"]
        if args.platform:
            target += ["--platform", PLATFORMS[args.platform]]
        pip("install", "--quiet", *target, *LEGACY_BINARY_DEPS)
        pip("install", "--quiet", "--target", str(libs), "--no-deps", *LEGACY_PURE_DEPS)
    files.update(collect(libs, "multi_user/libs"))
    return files


def package_extension(addon: Path, build: Path, args: argparse.Namespace) -> dict[str, Path]:
    """0.6.x: Blender installs the wheels the manifest lists, picking those
    for its platform and Python."""
    if args.server_binary:
        # Blender unpacks an extension's wheels without their file modes, so
        # a server inside one could not be started.
        raise PackagingError(
            "--server-binary is for Multi-User 0.5.x: with the 0.6.x extension, hosting "
            "from Blender needs replication-serve on PATH (see docs/blender.md)"
        )
    legacy = [o for o, v in (("--python", args.python), ("--platform", args.platform)) if v]
    legacy += ["--no-deps"] if args.no_deps else []
    if legacy:
        raise PackagingError(
            f"{', '.join(legacy)}: for Multi-User 0.5.x only; the 0.6.x extension carries "
            "wheels for every platform and Python it supports"
        )
    manifest = (addon / "blender_manifest.toml").read_text()
    listed = re.findall(r'"\./wheels/([^"]+\.whl)"', manifest)
    if not listed:
        raise PackagingError("the manifest lists no wheels")
    wheels = build / "wheels"
    wheels.mkdir(parents=True)
    # Two builds and a dozen downloads, mostly waiting on the index: a few
    # at a time, each into a directory of its own.
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = [
            pool.submit(
                pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels / name), str(source)
            )
            for name, source in (("client", CLIENT_ROOT), ("ours", PACKAGE_ROOT))
        ]
        jobs += [
            pool.submit(
                pip,
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                python,
                "--implementation",
                "cp",
                "--platform",
                platform,
                "--dest",
                str(wheels / f"{python}-{platform}"),
                f"msgpack=={MSGPACK_VERSION}",
            )
            for python, platform in msgpack_targets(manifest, listed)
        ]
        for job in jobs:
            job.result()
    for wheel in sorted(wheels.glob("*/*.whl")):
        wheel.replace(wheels / wheel.name)
    kept = [w for w in listed if not w.startswith("replication-")]
    added = sorted(p.name for p in wheels.glob("*.whl") if p.name not in kept)
    files = collect(addon, "", skip={"wheels"})
    for name in kept:
        files[f"wheels/{name}"] = addon / "wheels" / name
    for name in added:
        files[f"wheels/{name}"] = wheels / name
    lines = ",\n".join(f'   "./wheels/{name}"' for name in [*kept, *added])
    new_manifest = re.sub(
        r"wheels\s*=\s*\[[^\]]*\]", lambda _: f"wheels = [\n{lines},\n]", manifest, count=1
    )
    (build / "blender_manifest.toml").write_text(new_manifest)
    files["blender_manifest.toml"] = build / "blender_manifest.toml"
    return files


def msgpack_targets(manifest: str, wheels: list[str]) -> list[tuple[str, str]]:
    """(Python version, pip platform) for each Python the add-on ships pyzmq
    for and each platform the manifest names (all four when it names none)."""
    pythons = sorted(
        {f"{m[1]}.{m[2]}" for w in wheels if (m := re.match(r"pyzmq-[^-]+-cp(\d)(\d+)-", w))},
        key=lambda v: tuple(int(n) for n in v.split(".")),
    )
    if not pythons:
        raise PackagingError("the manifest lists no pyzmq wheels to match")
    listed = re.search(r"^platforms\s*=\s*\[([^\]]*)\]", manifest, re.MULTILINE)
    platforms = re.findall(r'"([^"]+)"', listed[1]) if listed else list(BLENDER_PLATFORMS)
    unknown = [p for p in platforms if p not in BLENDER_PLATFORMS]
    if unknown:
        raise PackagingError(f"the manifest names platforms this tool has no wheels for: {unknown}")
    return [(python, BLENDER_PLATFORMS[p]) for python in pythons for p in platforms]


def add_server_binary(binary: Path, directory: Path) -> None:
    if not binary.is_file():
        raise PackagingError(f"--server-binary {binary}: no such file")
    directory.mkdir(parents=True, exist_ok=True)
    name = "replication-serve.exe" if binary.suffix == ".exe" else "replication-serve"
    shutil.copy2(binary, directory / name)
    (directory / name).chmod(0o755)


def collect(root: Path, prefix: str, skip: set[str] | None = None) -> dict[str, Path]:
    """Archive name -> file, for every file under ``root``."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue
        if skip and rel.parts[0] in skip:
            continue
        files[f"{prefix}/{rel.as_posix()}" if prefix else rel.as_posix()] = path
    return files


def write_zip(files: dict[str, Path], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            path = files[name]
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            with open(path, "rb") as f:
                z.writestr(info, f.read())
    os.replace(partial, output)


if __name__ == "__main__":
    sys.exit(main())
