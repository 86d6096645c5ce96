"""Build the tiny bento into a real OCI image, run it the way the Kubernetes manifests do, and call it.

    sudo python -m deploy.smoke          # 5-9 minutes on 2 cores; removes everything it made
    sudo python -m deploy.smoke --keep   # keeps the images and the work folder, and prints how to remove them

No Docker daemon and no container registry are needed: only the Debian mirror and PyPI. Needs root (rootful
buildah/podman); installs buildah, podman, runc and debootstrap with apt-get when they are missing.

1. Base image: `debootstrap` makes a Debian bookworm root filesystem with its Python 3.11, imported with buildah
   as the local image named in deploy/smoke.Dockerfile.template.
2. `PICTUREBOOK_PROFILE=tiny bentoml build` from the production bentofile with two changes (smoke_bentofile), then
   `bentoml containerize --backend buildah`: BentoML writes the Dockerfile, buildah builds it.
3. `podman run` as production runs it (user 1034, no capabilities, read-only root, the dev overlay's memory limit,
   HF_HUB_OFFLINE=1) on an internal network, so the container reaches nothing and only its service port is
   reachable, from this host; waits for /readyz, sends the seed's request to /generate, checks the PNG, sends
   SIGTERM and checks a clean exit within the pod's grace period.
4. Reports sizes and times (deploy/README.md has the recorded run) and removes what it made unless --keep.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("smoke.Dockerfile.template")
BASE_IMAGE = re.search(r'__base_image__ = "([^"]+)"', TEMPLATE.read_text()).group(1)
DEBIAN = ("bookworm", "http://deb.debian.org/debian")
# What the official python:3.11-slim image gives BentoML's template on top of Debian: the interpreter, `pip` (the
# template installs uv with it) and the headers (torch.compile builds C++ against them).
BASE_PACKAGES = ("python3.11", "python3-pip", "libpython3.11-dev")
TOOLS = {"buildah": "buildah", "podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
SERVICE_PORT = 8000
BENTO_UID = 1034  # the `bentoml` user of BentoML's images; the Deployment runs as this uid
SEED_PROMPT = "两个角色在花园中交谈，左边是角色1，右边是角色2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the images, the container and the work folder")
    parser.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp/picturebook-smoke"),
        help="scratch folder: root filesystem, BentoML home, build context, logs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--image", default="localhost/picturebook-smoke:tiny", help="tag of the built image")
    parser.add_argument("--ready-timeout-s", type=float, default=600, help="how long to wait for /readyz")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.absolute()
    # BentoML refuses build files under a hidden folder (resolve_user_filepath), and the build context lives here.
    if any(part.startswith(".") for part in args.workdir.parts):
        parser.error(f"--workdir must not be inside a hidden folder: {args.workdir}")
    return args


class Cleanup:
    """What a run made, undone newest first; with keep, only listed. One failed undo does not stop the others."""

    def __init__(self) -> None:
        self.undo: list[list[str]] = []

    def add(self, *argv: str) -> None:
        self.undo.append(list(argv))

    def run(self, keep: bool) -> list[list[str]]:
        """Undo everything, or with keep nothing. Returns what is left to undo: the failed commands (keep: all)."""
        pending, self.undo = self.undo[::-1], []
        if keep:
            return pending
        return [argv for argv in pending if subprocess.run(argv, capture_output=True).returncode != 0]


def smoke_bentofile(production: dict) -> dict:
    """The production bentofile with the two changes the smoke build needs, and nothing else.

    `cuda_version` selects BentoML's CUDA template: FROM nvidia/cuda:...-ubuntu24.04 plus a deadsnakes PPA step for
    Python, neither reachable here. Without it BentoML uses its Debian template (the same steps minus those two and
    `ENV NVIDIA_VISIBLE_DEVICES=`), and the template file swaps its FROM python:3.11-slim for the local base.
    """
    smoke = copy.deepcopy(production)
    smoke["docker"].pop("cuda_version", None)
    smoke["docker"]["dockerfile_template"] = str(TEMPLATE.relative_to(REPO))
    return smoke


def pod_limits() -> dict:
    """What the manifests promise the container: the grace period after SIGTERM and the dev overlay's memory limit."""
    base = yaml.safe_load((REPO / "deploy/k8s/deployment.yaml").read_text())["spec"]["template"]["spec"]
    dev = yaml.safe_load((REPO / "deploy/k8s-dev/deployment-cpu.yaml").read_text())["spec"]["template"]["spec"]
    pre_stop = " ".join(base["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    memory = dev["containers"][0]["resources"]["limits"]["memory"]  # e.g. 4Gi; podman's g and m are binary units
    return {
        # Kubernetes runs preStop first and sends SIGTERM only when it returns, all within the grace period.
        "stop_budget_s": base["terminationGracePeriodSeconds"] - int(re.search(r"sleep (\d+)", pre_stop).group(1)),
        "memory": re.sub(r"([0-9]+)([GM])i$", lambda m: m.group(1) + m.group(2).lower(), memory),
    }


def debootstrap_argv(rootfs: Path) -> list[str]:
    suite, mirror = DEBIAN
    return ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(rootfs), mirror]


def containerize_argv(tag: str, image: str) -> list[str]:
    # chroot isolation: buildah runs the RUN steps without an OCI runtime (no cgroups, no rlimits to set), which
    # is what works inside a sandbox that is itself a container or a restricted VM.
    return [sys.executable, "-m", "bentoml", "containerize", tag, "--backend", "buildah", "-t", image,
            "--opt", "isolation=chroot"]  # fmt: skip


def run_argv(image: str, name: str, network: str, memory: str) -> list[str]:
    """`podman run` with the Deployment's security context and the dev overlay's limits."""
    nofile = min(16384, _soft_limit("RLIMIT_NOFILE"))
    nproc = min(16384, _soft_limit("RLIMIT_NPROC"))
    return [
        "podman", "run", "--detach", "--name", name,
        # crun (podman's default here) refuses a host with cgroup v1 plus a v2 hierarchy ("hybrid mode"); runc runs.
        "--runtime", "runc",
        # podman's default limits (1048576 open files) exceed what a process without CAP_SYS_RESOURCE may set.
        "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}",
        "--network", network,  # internal: no route out; this host reaches the service port at the container's address
        "--user", f"{BENTO_UID}:{BENTO_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", memory,
        # Read-only root: podman mounts a tmpfs on /tmp (an emptyDir in Kubernetes), where BentoML keeps its sockets
        # and metrics, and BentoML's home must be writable (it creates bentos/, models/, envs/, tmp/ at start-up).
        "--read-only", "--env", "BENTOML_HOME=/tmp/bentoml",
        "--env", "HF_HUB_OFFLINE=1",
        image,
    ]  # fmt: skip


def _soft_limit(name: str) -> int:
    import resource

    soft, _ = resource.getrlimit(getattr(resource, name))
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def seed_payload() -> dict:
    """The seed's request: a previous page, two characters, its prompt and seed 42."""
    from bench.workload import CHARACTER_SIZE, picture, png_b64

    return {
        "prev_frame": png_b64(picture(1)),
        "characters": [png_b64(picture(seed, (CHARACTER_SIZE, CHARACTER_SIZE))) for seed in (2, 3)],
        "prompt": SEED_PROMPT,
        "seed": 42,
    }


class Smoke:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.workdir
        self.logs = self.work / "logs"
        self.cleanup = Cleanup()
        self.report: dict[str, object] = {}
        run_id = uuid.uuid4().hex[:8]
        self.container = f"picturebook-smoke-{run_id}"
        self.network = f"picturebook-smoke-{run_id}"
        self.env = {**os.environ, "BENTOML_HOME": str(self.work / "bentoml"), "PICTUREBOOK_PROFILE": "tiny",
                    "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip

    def sh(self, argv: list[str], step: str, capture: bool = False, **kwargs) -> str:
        """Run a step, its output going live to logs/<step>.log (tail -f it), and return what it printed (with
        capture: its stdout only, for values read back). On failure the error carries the step's last lines."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{step}.log"
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            start = out.tell()
            done = subprocess.run(
                argv, stdout=subprocess.PIPE if capture else out, stderr=out if capture else subprocess.STDOUT, **kwargs
            )
        with log.open("rb") as out:
            out.seek(start)
            printed = out.read().decode(errors="replace")
        if done.returncode != 0:
            tail = "\n".join(printed.splitlines()[-40:])
            raise SystemExit(f"{step} failed ({done.returncode}): {' '.join(argv)}\n{tail}")
        return done.stdout.decode(errors="replace") if capture else printed

    def timed(self, key: str, function, *args):
        started = time.perf_counter()
        result = function(*args)
        self.report[key] = round(time.perf_counter() - started, 1)
        return result

    def run(self) -> dict:
        if self.work.exists():
            raise SystemExit(f"{self.work} exists (a kept run?): remove it or pass another --workdir")
        self.work.mkdir(parents=True)
        self.cleanup.add("rm", "-rf", str(self.work))
        try:
            self.ensure_tools()
            self.timed("base_image_s", self.base_image)
            tag = self.timed("bento_build_s", self.build_bento)
            self.timed("containerize_s", self.containerize, tag)
            self.report["image_bytes"] = int(self.image_inspect(self.args.image, "{{.Size}}"))
            self.report["base_image_bytes"] = int(self.image_inspect(BASE_IMAGE, "{{.Size}}"))
            self.serve_and_call()
        except BaseException:
            self.dump_container_log()
            raise
        finally:
            left = self.cleanup.run(self.args.keep)
            if left:
                label = "kept; remove with" if self.args.keep else "cleanup FAILED for"
                print(f"{label}:\n" + "\n".join("  " + " ".join(argv) for argv in left), file=sys.stderr)
        return self.report

    def ensure_tools(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("run as root: rootful buildah and podman (and debootstrap) need it")
        missing = [package for binary, package in TOOLS.items() if shutil.which(binary) is None]
        if missing:
            self.sh(["apt-get", "update", "-qq"], "apt")
            noninteractive = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            self.sh(["apt-get", "install", "-y", "-qq", *missing], "apt", env=noninteractive)

    def base_image(self) -> None:
        if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
            self.report["base_image"] = "reused"  # someone else's (or a kept run's): not ours to remove
            return
        rootfs = self.work / "rootfs"
        self.sh(debootstrap_argv(rootfs), "debootstrap")
        # python:3.11-slim's interpreter is not Debian's, so it has no PEP 668 marker and `pip install` (the
        # template's uv install) works; Debian's marker would refuse it.
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        self.trust_local_cas(rootfs)
        for leftovers in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        archive = self.work / "rootfs.tar"
        self.sh(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], "base")
        shutil.rmtree(rootfs)
        working = self.sh(["buildah", "from", "scratch"], "base", capture=True).strip()
        self.sh(["buildah", "add", "--quiet", working, str(archive), "/"], "base")
        self.sh(["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", working], "base")
        self.sh(["buildah", "commit", "--quiet", "--rm", working, BASE_IMAGE], "base")
        archive.unlink()
        self.cleanup.add("podman", "rmi", "--force", BASE_IMAGE)

    @staticmethod
    def trust_local_cas(rootfs: Path) -> None:
        """The build reaches PyPI the way this host does: where egress goes through a TLS-inspecting proxy, its CA is in
        /usr/local/share/ca-certificates, and the image's pip and uv must trust it too. A no-op elsewhere."""
        local = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        if not local:
            return
        for certificate in local:
            shutil.copy(certificate, rootfs / "usr/local/share/ca-certificates" / certificate.name)
        subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
        (rootfs / "etc/uv").mkdir(exist_ok=True)
        # uv verifies against its own bundled roots unless told to use the system store.
        (rootfs / "etc/uv/uv.toml").write_text("native-tls = true\n")

    def build_bento(self) -> str:
        bentofile = self.work / "bentofile.yaml"
        production = yaml.safe_load((REPO / "bentofile.yaml").read_text())
        bentofile.write_text(yaml.safe_dump(smoke_bentofile(production), sort_keys=False))
        out = self.sh([sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "--output", "tag", "."],
                      "bento", cwd=REPO, env=self.env)  # fmt: skip
        return re.search(r"__tag__:(\S+)", out).group(1)

    def containerize(self, tag: str) -> None:
        # BentoML copies the bento into a temporary build context and then refuses to read the bento's own
        # Dockerfile template from it unless that folder is under the working directory: both go under the workdir.
        (self.work / "tmp").mkdir()
        self.cleanup.add("podman", "rmi", "--force", self.args.image)
        self.sh(containerize_argv(tag, self.args.image), "containerize", cwd=self.work,
                env={**self.env, "TMPDIR": str(self.work / "tmp")})  # fmt: skip
        user = self.image_inspect(self.args.image, "{{.Config.User}}")
        if user != "bentoml":
            raise SystemExit(f"the image runs as {user!r}, not as the bentoml user")

    def serve_and_call(self) -> None:
        limits = pod_limits()
        self.sh(["podman", "network", "create", "--internal", self.network], "run")
        self.cleanup.add("podman", "network", "rm", "--force", self.network)
        self.cleanup.add("podman", "rm", "--force", self.container)
        started = time.perf_counter()
        self.sh(run_argv(self.args.image, self.container, self.network, limits["memory"]), "run")
        address = self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
        url = f"http://{address}:{SERVICE_PORT}"
        self.wait_ready(url)
        self.report["ready_s"] = round(time.perf_counter() - started, 1)

        self.check_no_network()
        started = time.perf_counter()
        response = requests.post(f"{url}/generate", json=seed_payload(), timeout=300)
        self.report["generate_s"] = round(time.perf_counter() - started, 2)
        if response.status_code != 200:
            raise SystemExit(f"/generate answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        self.report["png"] = check_png(body["img"])
        if body["seed"] != 42:
            raise SystemExit(f"/generate drew with seed {body['seed']}, not the requested 42")

        self.sh(["podman", "kill", "--signal", "TERM", self.container], "stop")
        started = time.perf_counter()
        while self.inspect("{{.State.Running}}") == "true":
            if time.perf_counter() - started > limits["stop_budget_s"]:
                self.sh(["podman", "kill", "--signal", "KILL", self.container], "stop")
                raise SystemExit(f"still running {limits['stop_budget_s']} s after SIGTERM (the pod's grace period)")
            time.sleep(0.2)
        self.report["stop_s"] = round(time.perf_counter() - started, 1)
        self.report["exit_code"] = int(self.inspect("{{.State.ExitCode}}"))
        if self.report["exit_code"] != 0:
            raise SystemExit(f"exited with {self.report['exit_code']} after SIGTERM")

    def image_inspect(self, image: str, template: str) -> str:
        return self.sh(["podman", "image", "inspect", "-f", template, image], "inspect", capture=True).strip()

    def inspect(self, template: str) -> str:
        return self.sh(["podman", "inspect", "-f", template, self.container], "inspect", capture=True).strip()

    def wait_ready(self, url: str) -> None:
        deadline = time.perf_counter() + self.args.ready_timeout_s
        while time.perf_counter() < deadline:
            # A container that died leaves its address unrouted, and this host's own egress may then answer for it.
            if self.inspect("{{.State.Running}}") != "true":
                raise SystemExit(f"the container exited ({self.inspect('{{.State.ExitCode}}')}) before it was ready")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise SystemExit(f"not ready in {self.args.ready_timeout_s} s")

    def check_no_network(self) -> None:
        probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
        reached = subprocess.run(["podman", "exec", self.container, "python", "-c", probe], capture_output=True)
        if reached.returncode == 0:
            raise SystemExit("the container reached pypi.org: its network is not isolated")

    def dump_container_log(self) -> None:
        if subprocess.run(["podman", "container", "exists", self.container]).returncode == 0:
            log = subprocess.run(["podman", "logs", "--tail", "60", self.container], capture_output=True, text=True)
            print(f"--- last lines of the container's log ---\n{log.stdout}{log.stderr}", file=sys.stderr)


def check_png(img_b64: str) -> dict:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(img_b64, validate=True)))
    image.load()
    if image.format != "PNG":
        raise SystemExit(f"/generate returned {image.format}, not PNG")
    return {"width": image.width, "height": image.height, "mode": image.mode}


def main(argv: list[str] | None = None) -> None:
    report = Smoke(parse_args(argv)).run()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
