"""The README is the user's manual: every configuration knob is in it, and the commands it gives exist."""

import re
from pathlib import Path

from serving.settings import environment_knobs

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CI = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
LOCUSTFILE = (Path(__file__).resolve().parent.parent / "locustfile.py").read_text()


def test_every_setting_is_documented_in_the_readme():
    documented = set(re.findall(r"`(PICTUREBOOK_[A-Z0-9_]+)`", README))
    knobs = set(environment_knobs())
    load_test_knobs = set(re.findall(r'env_var="(PICTUREBOOK_[A-Z0-9_]+)"', LOCUSTFILE))
    assert knobs - documented == set(), "undocumented knobs"
    assert load_test_knobs - documented == set(), "undocumented load-test knobs"
    assert documented - knobs - load_test_knobs == set(), "the README documents knobs that do not exist"


def test_ci_runs_the_readme_test_command():
    test_section = README.split("## Test", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", test_section, re.S).group(1).strip()
    assert command in CI.splitlines()
    assert "pip install -r requirements.txt" in CI


def test_pinned_versions_meet_the_security_minimums():
    root = Path(__file__).resolve().parent.parent
    security = (root / "docs" / "SECURITY.md").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==([\d.]+)$", (root / "requirements-runtime.txt").read_text(), re.M))
    for package in ("bentoml", "pillow"):
        minimum = re.search(rf"^\| {package} \| ([\d.]+) \|", security, re.M).group(1)
        as_tuple = lambda version: tuple(int(part) for part in version.split("."))  # noqa: E731
        assert as_tuple(pins[package]) >= as_tuple(minimum), package
