"""`python -m deploy.smoke` (build the bento into an OCI image, run it, call it) takes minutes, so the suite checks its
command line and its cleanup, and that the smoke image differs from the production one only where it must."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys

import pytest
import yaml

from deploy import smoke
from testkit.server import REPO


def render_dockerfile(bentofile: dict) -> list[str]:
    """The Dockerfile BentoML generates for a bentofile's `docker` section (as `bentoml containerize` does)."""
    from bentoml._internal.bento.build_config import CondaOptions, DockerOptions
    from bentoml._internal.container.generate import generate_containerfile

    docker = DockerOptions(**bentofile["docker"]).with_defaults()
    # buildah has no BuildKit, so BentoML renders without cache mounts, as for `containerize --backend buildah`.
    text = generate_containerfile(
        docker, str(REPO), conda=CondaOptions().with_defaults(), bento_fs=REPO, enable_buildkit=False
    )
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def production() -> dict:
    return yaml.safe_load((REPO / "bentofile.yaml").read_text())


def test_smoke_bentofile_changes_only_the_base(production):
    smoke_file = smoke.smoke_bentofile(production)
    assert {**smoke_file, "docker": None} == {**production, "docker": None}
    docker = dict(production["docker"])
    docker.pop("cuda_version")
    assert smoke_file["docker"] == {**docker, "dockerfile_template": "deploy/smoke.Dockerfile.template"}
    assert "dockerfile_template" not in production["docker"], "the production bentofile must not see the smoke template"


def test_smoke_dockerfile_is_the_production_one_but_its_base(production, monkeypatch):
    # BentoML reads a Dockerfile template only from under the working directory.
    monkeypatch.chdir(REPO)
    prod, smoke_lines = render_dockerfile(production), render_dockerfile(smoke.smoke_bentofile(production))
    added, removed = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=prod, b=smoke_lines, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += prod[i1:i2]
            added += smoke_lines[j1:j2]
    assert added == [f"FROM {smoke.BASE_IMAGE} as base-container"]
    # The base, and what only the CUDA template has: the GPU environment variable, Python from the deadsnakes PPA
    # (were `cuda_version` dropped from the bentofile, only the FROM line would differ).
    cuda_only = re.compile(
        r"^(FROM |ENV NVIDIA_VISIBLE_DEVICES=|RUN \\$|\s*set -eux && \\$|.*software-properties-common|"
        r"\s*# add deadsnakes|.*add-apt-repository ppa:deadsnakes/ppa|\s*apt-get update -y && \\$|"
        r".*install -y .*python3\.11 python3\.11-dev$|RUN ln -sf /usr/bin/python3\.11 |\s*ln -sf /usr/bin/pip3\.11 )"
    )
    assert [line for line in removed if not cuda_only.match(line)] == []
    assert removed[0].startswith("FROM ") and removed[0] != added[0]
    # The steps that matter at run time are generated identically: system packages, user, environment, entrypoint.
    for line in ("USER bentoml", "ENV BENTOML_HOME=/home/bentoml/"):
        assert line in smoke_lines
    assert any("libgl1 libglib2.0-0" in line for line in smoke_lines)


def test_container_runs_as_the_deployment_does():
    deployment = yaml.safe_load((REPO / "deploy/k8s/deployment.yaml").read_text())["spec"]["template"]["spec"]
    limits = smoke.pod_limits()
    assert limits == {"stop_budget_s": deployment["terminationGracePeriodSeconds"] - 15, "memory": "4g"}
    argv = smoke.run_argv("img", "ctr", "net", limits["memory"])
    options = " ".join(argv)
    security = deployment["securityContext"]
    assert f"--user {security['runAsUser']}:{security['runAsGroup']}" in options
    for option in ("--read-only", "--cap-drop ALL", "--security-opt no-new-privileges", "--network net",
                   "--memory 4g", "--env HF_HUB_OFFLINE=1"):  # fmt: skip
        assert option in options
    assert argv[-1] == "img", "no command after the image: the image's own entrypoint serves the bento"
    assert "--publish" not in argv and "-p" not in argv


def test_build_commands():
    assert smoke.debootstrap_argv(REPO / "r")[-3:] == ["bookworm", str(REPO / "r"), "http://deb.debian.org/debian"]
    assert "--include=python3.11,python3-pip,libpython3.11-dev" in smoke.debootstrap_argv(REPO / "r")
    argv = smoke.containerize_argv("picturebook:abc", "localhost/x:tiny")
    assert argv[argv.index("containerize") + 1] == "picturebook:abc"
    assert " ".join(argv).endswith("--backend buildah -t localhost/x:tiny --opt isolation=chroot")
    assert smoke.BASE_IMAGE == "localhost/picturebook-smoke-base:bookworm"


def test_command_line(tmp_path):
    args = smoke.parse_args([])
    assert not args.keep and args.image == "localhost/picturebook-smoke:tiny"
    assert str(args.workdir) == "/var/tmp/picturebook-smoke"
    assert smoke.parse_args(["--keep", "--workdir", str(tmp_path / "w")]).keep
    with pytest.raises(SystemExit) as refused:
        smoke.parse_args(["--workdir", str(tmp_path / ".hidden" / "w")])
    assert refused.value.code == 2
    help_text = subprocess.run(
        [sys.executable, "-m", "deploy.smoke", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "--keep" in help_text and "debootstrap" in help_text


def test_cleanup_undoes_newest_first_and_past_failures(tmp_path):
    log = tmp_path / "log"
    cleanup = smoke.Cleanup()
    for step in ("1", "2"):
        cleanup.add("sh", "-c", f"echo {step} >> {log}")
    cleanup.add("false")
    cleanup.add("sh", "-c", f"echo 3 >> {log}")
    assert cleanup.run(keep=False) == [["false"]]
    assert log.read_text().split() == ["3", "2", "1"]
    assert cleanup.run(keep=False) == [], "each undo runs once"


def test_keep_leaves_everything_and_lists_how_to_remove_it(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    cleanup = smoke.Cleanup()
    cleanup.add("rm", "-rf", str(made))
    cleanup.add("podman", "rmi", "--force", "localhost/x:tiny")
    assert cleanup.run(keep=True) == [["podman", "rmi", "--force", "localhost/x:tiny"], ["rm", "-rf", str(made)]]
    assert made.is_dir()


def test_an_existing_workdir_is_refused_and_left_alone(tmp_path):
    (tmp_path / "precious").write_text("not the smoke's")
    with pytest.raises(SystemExit, match="exists"):
        smoke.Smoke(smoke.parse_args(["--workdir", str(tmp_path)])).run()
    assert (tmp_path / "precious").read_text() == "not the smoke's"
