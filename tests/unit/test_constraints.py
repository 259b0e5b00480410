"""Installs are reproducible: every package in this environment is pinned, at this version, in constraints.txt."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
NOT_PINNED = {"pip", "setuptools", "wheel", "ledger"}  # the installer's own tools, and this project


def _name(value: str) -> str:
    return re.sub(r"[-_.]+", "-", value).lower()


def test_every_installed_package_is_pinned_at_its_version():
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[_name(name)] = version.strip()
    installed = {_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {name: (version, pinned.get(name)) for name, version in installed.items()
             if name not in NOT_PINNED and pinned.get(name) != version}
    assert drift == {}, "installed (left) differs from constraints.txt (right); pin deliberately: " + str(drift)
