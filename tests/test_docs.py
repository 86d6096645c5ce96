"""The README is the user's manual: every configuration knob is in it, and the commands it gives exist."""

import re
from pathlib import Path

from serving.settings import environment_knobs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
LOCUSTFILE = (Path(__file__).resolve().parent.parent / "locustfile.py").read_text()


def test_every_setting_is_documented_in_the_readme():
    documented = set(re.findall(r"`(PICTUREBOOK_[A-Z0-9_]+)`", README))
    knobs = set(environment_knobs())
    load_test_knobs = set(re.findall(r'env_var="(PICTUREBOOK_[A-Z0-9_]+)"', LOCUSTFILE))
    assert knobs - documented == set(), "undocumented knobs"
    assert load_test_knobs - documented == set(), "undocumented load-test knobs"
    assert documented - knobs - load_test_knobs == set(), "the README documents knobs that do not exist"


def first_command(section: str) -> str:
    return re.search(r"```bash\n(.+?)\n```", README.split(f"## {section}\n", 1)[1], re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_set_up_and_test_commands():
    ci_lines = CI.splitlines()
    set_up, test = first_command("Set up"), first_command("Test")
    assert set_up in ci_lines and test in ci_lines
    assert ci_lines.index(set_up) < ci_lines.index(test)
    assert "pip install -q -r requirements.txt" in (ROOT / set_up.split()[0]).read_text()


def test_pinned_versions_meet_the_security_minimums():
    root = Path(__file__).resolve().parent.parent
    security = (root / "docs" / "SECURITY.md").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==([\d.]+)$", (root / "requirements-runtime.txt").read_text(), re.M))
    for package in ("bentoml", "pillow"):
        minimum = re.search(rf"^\| {package} \| ([\d.]+) \|", security, re.M).group(1)
        as_tuple = lambda version: tuple(int(part) for part in version.split("."))  # noqa: E731
        assert as_tuple(pins[package]) >= as_tuple(minimum), package
