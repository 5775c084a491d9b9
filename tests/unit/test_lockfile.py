"""Reproducible installs: uv.lock is the one source of versions, and everything that installs
(the Lambda layer, the runner image, `make dev` / `make test`) installs from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from local.template import ROOT, load_template

UV = Path(sys.executable).parent / "uv"  # the `uv==` pin of the dev group


def _uv(*args: str) -> str:
    if not UV.exists():
        pytest.fail(f"{UV} missing: the dev group pins uv (make test installs it)")
    done = subprocess.run([str(UV), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _requirements(text: str) -> str:
    """The requirement lines and hashes, without uv's header (it names the output file)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_the_lock_matches_pyproject() -> None:
    _uv("lock", "--check", "--offline")


@pytest.mark.parametrize(("path", "extra"), [("layers/common/requirements.txt", ()),
                                             ("wa_runner/requirements.txt", ("--extra", "runner"))])
def test_layer_and_runner_requirements_are_the_lock_exported(path: str, extra: tuple[str, ...]) -> None:
    exported = _uv("export", "--frozen", "--offline", "--no-default-groups", "--no-emit-project", *extra)
    assert _requirements((ROOT / path).read_text()) == _requirements(exported), f"run `make lock` ({path} is stale)"


def test_exports_pin_every_package_with_hashes() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {(p["name"], p["version"]) for p in lock["package"] if "version" in p}
    for path in ("layers/common/requirements.txt", "wa_runner/requirements.txt"):
        text = (ROOT / path).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", text, re.MULTILINE)
        assert pins, path
        for name, version in pins:
            assert (name, version) in locked, (path, name, version)
        # Every requirement carries its hashes: pip then refuses any other file.
        assert text.count("--hash=sha256:") >= len(pins), path
    layer = (ROOT / "layers/common/requirements.txt").read_text()
    # The Lambda layer gets no test or local-stack package, and the lite phone-number data only.
    for absent in ("moto==", "pytest==", "neonize==", "aws-sam-cli==", "cfn-lint=="):
        assert absent not in layer
    assert "phonenumberslite==" in layer


def test_the_layer_and_the_image_install_from_the_exports() -> None:
    layer = load_template().resources["CommonLayer"]
    assert layer["Properties"]["ContentUri"] == "layers/common/"  # sam build reads requirements.txt there
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    dockerfile = (ROOT / "wa_runner/Dockerfile").read_text()
    assert "COPY wa_runner/requirements.txt" in dockerfile
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    assert "--require-hashes" in install and "--no-deps" in install and "-r /tmp/requirements.txt" in install


def test_the_ratelimiter_floor_admits_only_versions_on_pyrate_limiter_4() -> None:
    """requests-ratelimiter < 0.9 pins pyrate-limiter < 3, whose API aiadmin.yclients cannot use."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if d.startswith("requests-ratelimiter"))
    assert tuple(int(x) for x in floor.split(">=")[1].split(".")) >= (0, 9)
    assert any(d.startswith("pyrate-limiter>=4") for d in deps)


def test_make_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    # Every sync is --frozen: the lock is used as it is, never re-resolved on the way.
    syncs = re.findall(r"\$\(SYNC\)[^\n]*", makefile)
    assert syncs and "SYNC := $(UV) sync --frozen" in makefile
    assert "pip install -e" not in makefile
