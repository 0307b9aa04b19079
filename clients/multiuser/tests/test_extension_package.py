"""The Multi-User 0.6.9 extension as the packaging tool writes it: the
add-on's files untouched, the manifest at the root of the zip, and wheels
for this project's library and everything it needs on every platform and
Python the add-on is shipped for; and Blender 4.5's and 5.0's own
extension validation accepts it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import bpy_module
import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import TOOL, release

BLENDER_PLATFORMS = {
    # Blender's name -> does a wheel's platform tag serve it (as Blender's
    # installer decides: manylinux of any glibc for Linux; for macOS the
    # architecture or universal2).
    "linux-x64": lambda tag: tag.startswith("manylinux") and tag.endswith("_x86_64"),
    "windows-x64": lambda tag: tag == "win_amd64",
    "macos-x64": lambda tag: tag.startswith("macosx_") and tag.endswith(("_x86_64", "_universal2")),
    "macos-arm64": lambda tag: (
        tag.startswith("macosx_") and tag.endswith(("_arm64", "_universal2"))
    ),
}
PYTHONS = ["3.11", "3.12", "3.13"]
"""Blender 4.2 to 5.0 run Python 3.11, 5.1 runs 3.13: the add-on ships
pyzmq for these three."""


def distribution(wheel: str) -> str:
    return canonicalize_name(wheel.split("-")[0])


def serves(wheel: str, platform: str, python: str) -> bool:
    python_tag, _abi, platform_tags = wheel[: -len(".whl")].split("-")[-3:]
    if python_tag not in ("py3", f"cp{python.replace('.', '')}"):
        return False
    return platform_tags == "any" or any(
        BLENDER_PLATFORMS[platform](tag) for tag in platform_tags.split(".")
    )


SYSTEMS = {
    "linux-x64": ("linux", "Linux"),
    "windows-x64": ("win32", "Windows"),
    "macos-x64": ("darwin", "Darwin"),
    "macos-arm64": ("darwin", "Darwin"),
}


def requirements(z: zipfile.ZipFile, wheel_name: str, platform: str, python: str) -> set[str]:
    """The distributions a wheel in the zip needs in Blender's Python (CPython
    ``python`` on ``platform``), extras left out."""
    with zipfile.ZipFile(z.open(f"wheels/{wheel_name}")) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(wheel.read(metadata).decode())
    sys_platform, system = SYSTEMS[platform]
    environment = {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": sys_platform,
        "platform_system": system,
        "os_name": "nt" if system == "Windows" else "posix",
        "extra": "",
    }
    out = set()
    for line in message.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            out.add(canonicalize_name(requirement.name))
    return out


def test_the_add_on_is_untouched_and_its_manifest_lists_our_wheels(extension_zip):
    addon = release("0.6.9") / "multi_user"
    original = tomllib.loads((addon / "blender_manifest.toml").read_text())
    with zipfile.ZipFile(extension_zip) as z:
        names = set(z.namelist())
        # Blender's "Install from Disk" reads the manifest at the root.
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
        for path in addon.rglob("*"):
            rel = path.relative_to(addon).as_posix()
            if path.is_dir() or rel.startswith("wheels/") or rel == "blender_manifest.toml":
                continue
            assert z.read(rel) == path.read_bytes(), f"{rel} differs from the release"
        code = {p.relative_to(addon).as_posix() for p in addon.rglob("*") if p.is_file()}
        extra = {n for n in names - code if not n.startswith("wheels/")}
        assert extra == set(), "files the release does not have"

        wheels = [w.removeprefix("./wheels/") for w in manifest["wheels"]]
        assert {f"wheels/{w}" for w in wheels} == {n for n in names if n.startswith("wheels/")}
        assert {k: v for k, v in manifest.items() if k != "wheels"} == {
            k: v for k, v in original.items() if k != "wheels"
        }
        dists = {distribution(w) for w in wheels}
        assert "replication" not in dists  # the add-on's own library is gone
        assert {"replication-serve-multiuser", "replication-client", "msgpack", "pyzmq"} <= dists
        assert "deepdiff" in dists  # the add-on's own code imports it
        assert len({w.split("-")[1] for w in wheels if distribution(w) == "msgpack"}) == 1

        # Every platform and Python gets one wheel of each distribution
        # needed: ours and deepdiff (the add-on imports it), what they
        # require, and so on.
        for platform in original["platforms"]:
            for python in PYTHONS:
                needed: set[str] = set()
                todo = {"replication-serve-multiuser", "deepdiff"}
                while todo:
                    dist = todo.pop()
                    needed.add(dist)
                    found = [
                        w for w in wheels if distribution(w) == dist and serves(w, platform, python)
                    ]
                    assert len(found) == 1, f"{dist} for {platform}, Python {python}: {found}"
                    todo |= requirements(z, found[0], platform, python) - needed
                assert needed == {
                    "replication-serve-multiuser",
                    "replication-client",
                    "pyzmq",
                    "msgpack",
                    "deepdiff",
                    "orderly-set",
                }


@pytest.mark.parametrize("line", sorted(bpy_module.VERSIONS))
def test_blender_validates_and_installs_the_extension(extension_zip, line, tmp_path):
    """``blender --command extension validate``, through the module (which
    takes no command line): the same handler, called directly; then the
    "Install from Disk" operator, which enables it."""
    site = bpy_module.require(line)
    script = (
        "import os, sys, bpy\n"
        "from bl_pkg import bl_extension_cli\n"
        "code = bl_extension_cli.cli_extension_handler(['validate', sys.argv[1]])\n"
        "print('VALIDATE', code, flush=True)\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import blender5; blender5.restore()\n"
        "done = bpy.ops.extensions.package_install_files(\n"
        "    filepath=sys.argv[1], repo='user_default', enable_on_install=True)\n"
        "names = [a.module for a in bpy.context.preferences.addons]\n"
        "print('INSTALLED', sorted(done), 'bl_ext.user_default.multi_user' in names, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            script,
            str(extension_zip),
            str(Path(__file__).resolve().parent / "blender"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PYTHONPATH": str(site),
            "BLENDER_USER_RESOURCES": str(tmp_path / "resources"),
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
    )
    out = done.stdout + done.stderr
    assert "VALIDATE 0" in out and "Success" in out, out
    assert "INSTALLED ['FINISHED'] True" in out, out


@pytest.mark.parametrize(
    "options, reason",
    [
        (["--server-binary", "BINARY"], "replication-serve on PATH"),
        (["--python", "3.10"], "--python: for Multi-User 0.5.x only"),
        (["--platform", "windows", "--no-deps"], "--platform, --no-deps: for Multi-User 0.5.x"),
    ],
)
def test_options_of_the_0_5_line_are_refused_for_the_extension_with_the_reason(
    options, reason, tmp_path
):
    binary = tmp_path / "replication-serve"
    binary.write_text("")
    options = [str(binary) if o == "BINARY" else o for o in options]
    done = subprocess.run(
        [sys.executable, str(TOOL), str(release("0.6.9")), "-o", str(tmp_path / "out.zip")]
        + options,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert reason in done.stderr
    assert not (tmp_path / "out.zip").exists()


def test_the_extension_is_found_in_its_zip_as_the_extensions_platform_serves_it(tmp_path):
    """The tool takes the release folder (the fixture's) or the extension's
    own zip, whose files, manifest included, sit at its root."""
    addon = release("0.6.9") / "multi_user"
    served = tmp_path / "multi_user-0.6.9.zip"
    with zipfile.ZipFile(served, "w") as z:
        for path in sorted(addon.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(addon).as_posix())
    spec = importlib.util.spec_from_file_location("package_addon", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    found = tool.find_addon(served, tmp_path / "work")
    assert (found / "blender_manifest.toml").read_bytes() == (
        addon / "blender_manifest.toml"
    ).read_bytes()
    assert sorted(p.name for p in (found / "wheels").iterdir()) == sorted(
        p.name for p in (addon / "wheels").iterdir()
    )
