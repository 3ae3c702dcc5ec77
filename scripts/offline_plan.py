"""Print what an offline install from a wheelhouse must add to this interpreter.

Run by ``scripts/install.sh --wheelhouse DIR --target SITE`` with the host's interpreter
(SITE on its path). Walks the requirements of this repository's two distributions (their
wheels in DIR) and prints ``name==version`` for every distribution to install: the two
themselves (unless --deps-only), and each dependency that no installed distribution
satisfies, at the version the wheelhouse holds. A dependency the host already satisfies is
left to the host, so its numpy, transformers, ... stay what they are; pip's own resolver
cannot be used for this, because ``pip install --target`` ignores what is installed.

torch, nvidia-* and triton are never installed: they belong to the host's torch build (a
CUDA one pulls nvidia-* and triton; xgrammar asks for triton too, but only uses it on GPU).

Standard library plus ``packaging`` (pip's vendored copy where the host has none), since the
host may have nothing else.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # a bare host interpreter: pip brings its own copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.tags import sys_tags  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.utils import (  # type: ignore[no-redef,assignment]
        canonicalize_name,
        parse_wheel_filename,
    )
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef,assignment]

PROJECT = ("fashion-florence", "fashion-florence-client")


def _host_owned(name: str) -> bool:
    return name == "torch" or name == "triton" or name.startswith("nvidia-")


def _wheels(wheelhouse: Path) -> dict[str, list[tuple[Version, Path]]]:
    """canonical name -> (version, wheel) for the wheels this interpreter can install."""
    supported = set(sys_tags())
    found: dict[str, list[tuple[Version, Path]]] = {}
    for path in wheelhouse.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(path.name)
        if supported & set(tags):
            found.setdefault(canonicalize_name(name), []).append((version, path))
    return found


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        entry = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(entry).decode())
    return message.get_all("Requires-Dist") or []


def _installed(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def plan(wheelhouse: Path, deps_only: bool = False, extras: str = "") -> list[str]:
    """``extras`` (comma-separated) are optional extras of the server's distribution."""
    wheels = _wheels(wheelhouse)
    chosen: dict[str, tuple[Version, Path]] = {}
    server = f"{PROJECT[0]}[{extras}]" if extras else PROJECT[0]
    todo = [(Requirement(name), "") for name in (server, *PROJECT[1:])]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        if _host_owned(name):
            continue
        top_level = name in PROJECT
        have = _installed(name)
        if not top_level and have is not None and req.specifier.contains(have, prereleases=True):
            # The host's (or an earlier run's) copy does; what an extra adds may still lack.
            for extra_name in sorted(req.extras):
                if (name, extra_name) not in seen:
                    seen.add((name, extra_name))
                    todo += [(Requirement(r), extra_name) for r in metadata.requires(name) or []]
            continue
        if name in chosen:
            version = chosen[name][0]
            if not req.specifier.contains(version, prereleases=True):
                raise SystemExit(f"wheelhouse: {name} {version} does not satisfy {req}")
        else:
            fits = [w for w in wheels.get(name, []) if req.specifier.contains(w[0], True)]
            if not fits:
                held = sorted(str(v) for v, _ in wheels.get(name, [])) or "none"
                found = f", installed {have}" if have is not None else ""
                raise SystemExit(f"wheelhouse: no wheel for {req} (held: {held}{found})")
            chosen[name] = max(fits)
        for extra_name in sorted(req.extras) or [""]:
            if (name, extra_name) not in seen:
                seen.add((name, extra_name))
                todo += [(Requirement(r), extra_name) for r in _requires(chosen[name][1])]
    if deps_only:
        for name in PROJECT:
            chosen.pop(name, None)
    return [f"{name}=={chosen[name][0]}" for name in sorted(chosen)]


def main(argv: list[str]) -> int:
    deps_only = "--deps-only" in argv
    args = [a for a in argv if a != "--deps-only"]
    extras = ""
    if args[:1] == ["--extras"] and len(args) > 1:
        extras, args = args[1], args[2:]
    if len(args) != 1:
        print("usage: offline_plan.py [--deps-only] [--extras LIST] WHEELHOUSE", file=sys.stderr)
        return 2
    for line in plan(Path(args[0]), deps_only, extras):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
