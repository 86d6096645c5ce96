"""What a server says about how exposed it runs, against the real `bentoml serve` (tiny profile): a warning at
start when it listens on every interface with no API key (BentoML binds 0.0.0.0 unless given --host), none on
loopback; and one `picturebook_safety_checker_enabled` value on /metrics however many processes serve."""

from __future__ import annotations

import requests

from serving.listening import listening_address, open_to_the_network

WARNING = "listening on all interfaces"


def samples(url: str, name: str) -> list[str]:
    """The sample lines of one metric on /metrics (not its # HELP and # TYPE lines)."""
    lines = requests.get(f"{url}/metrics", timeout=10).text.splitlines()
    return [line for line in lines if line.startswith((name + " ", name + "{"))]


def test_all_interfaces_without_a_key_is_warned_at_start(open_server):
    url, log = open_server
    port = url.rsplit(":", 1)[1]
    [line] = [line for line in log.read_text(errors="replace").splitlines() if WARNING in line]
    assert f"(0.0.0.0:{port})" in line and "--host 127.0.0.1" in line and "PICTUREBOOK_API_KEY" in line
    assert "WARNING" in line or "warning" in line.lower()


def test_loopback_without_a_key_is_not_warned(tiny_server):
    """The session's shared server (tests/conftest.py) is the loopback one with every default setting."""
    url, log = tiny_server
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    # The checker is on by default: one value on /metrics, and it says so (the front's own gauge is not shown).
    assert samples(url, "picturebook_safety_checker_enabled") == ["picturebook_safety_checker_enabled 1.0"]
    text = log.read_text(errors="replace")
    assert "Running startup hook: start" in text, "the hook that warns ran, and found nothing to say"
    assert WARNING not in text


def test_the_checker_off_is_one_zero_on_metrics(open_server):
    url, log = open_server
    assert samples(url, "picturebook_safety_checker_enabled") == ["picturebook_safety_checker_enabled 0.0"]
    assert "the picture safety checker is OFF" in log.read_text(errors="replace")


def test_only_an_unspecified_address_without_a_key_is_warned():
    assert open_to_the_network(("0.0.0.0", 8000), None)
    assert open_to_the_network(("::", 8000, 0, 0)[:2], None)
    assert open_to_the_network(("0.0.0.0", 8000), "a-key") is None
    for host in ("127.0.0.1", "::1", "192.168.1.20"):
        assert open_to_the_network((host, 8000), None) is None
    assert open_to_the_network(None, None) is None  # not a BentoML worker: nothing known, nothing said


def test_the_address_is_read_from_the_descriptor_bentoml_hands_the_worker():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        argv = ["service.py", "service:PictureBook", "--fd", str(server.fileno()), "--service-name", "picturebook"]
        assert listening_address(argv) == ("127.0.0.1", port)
        server.getsockname()  # still open: the duplicate was closed, not the socket
    assert listening_address(["service.py"]) is None
    assert listening_address(["service.py", "--fd", "not-a-number"]) is None
