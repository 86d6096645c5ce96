"""The BentoML service over HTTP: a real `bentoml serve` on loopback, the tiny profile, real clients."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import textwrap
from concurrent.futures import ThreadPoolExecutor

import bentoml
import pytest
import requests
import yaml
from conftest import bentoml_cli
from PIL import Image

from testkit.pictures import picture, png_b64, png_from_b64, psnr
from testkit.server import (
    REPO,
    metric,
    minor_page_faults,
    model_service_socket,
    model_worker,
)

# The Python client from the seed README (../shared/seed/000_333b071f23a24d57.txt), verbatim.
SEED_CLIENT = textwrap.dedent(
    """
    import requests
    import base64

    # 加载图像文件并转换为base64
    def image_to_base64(image_path):
        with open(image_path, "rb") as img_file:
            return base64.b64encode(img_file.read()).decode('utf-8')

    # 准备请求数据
    payload = {
        "prev_frame": image_to_base64("previous_scene.png"),
        "characters": [
            image_to_base64("character1.png"),
            image_to_base64("character2.png")
        ],
        "prompt": "两个角色在花园中交谈，左边是角色1，右边是角色2",
        "seed": 42
    }

    # 发送请求
    response = requests.post("http://localhost:8000/generate", json=payload)
    result = response.json()

    # 保存生成的图像
    if "img" in result:
        img_data = base64.b64decode(result["img"])
        with open("generated_scene.png", "wb") as f:
            f.write(img_data)
    """
)


def payload(seed=7, prev=1, characters=(2, 3), prompt="a fox and a bear have a picnic"):
    return {
        "prev_frame": png_b64(picture(prev)) if prev is not None else None,
        "characters": [png_b64(picture(c, (96, 96))) for c in characters],
        "prompt": prompt,
        "seed": seed,
    }


@pytest.fixture(scope="module")
def served(tiny_server):
    """Batches of up to 4 pages, the default: the session's shared server (tests/conftest.py)."""
    return tiny_server[0]


def post(url, body, **kw):
    return requests.post(f"{url}/generate", json=body, timeout=120, **kw)


def test_seed_client_runs_verbatim_on_the_default_port(tmp_path, open_server):
    """The seed's client, unchanged, against `bentoml serve` with no --port (the open server, tests/conftest.py);
    that server has batching off, which BentoML's batcher cannot express (its size must be > 1)."""
    url, _ = open_server
    assert url.endswith(":8000")
    picture(1).save(tmp_path / "previous_scene.png")
    picture(2, (128, 128)).save(tmp_path / "character1.png")
    picture(3, (128, 128)).convert("P").save(tmp_path / "character2.png")  # a palette PNG, as drawings often are
    subprocess.run([sys.executable, "-c", SEED_CLIENT], cwd=tmp_path, check=True, timeout=120)
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda seed: post(url, payload(seed=seed)), range(3)))
    page = Image.open(tmp_path / "generated_scene.png", formats=["PNG"])
    assert page.size == (256, 256)
    assert [r.status_code for r in responses] == [200] * 3
    assert [r.json()["batch_size"] for r in responses] == [1] * 3


def test_contract_with_bentoml_client(served):
    with bentoml.SyncHTTPClient(served) as client:
        result = client.generate(**payload())
    assert set(result) >= {"img", "seed"}
    assert result["seed"] == 7
    assert png_from_b64(result["img"]).size == (256, 256)


def test_first_page_and_no_characters(served):
    first = post(served, {"prompt": "once upon a time", "characters": [], "seed": 1})
    assert first.status_code == 200, first.text
    no_prev_field = post(served, {"prompt": "once upon a time", "seed": 1})
    assert no_prev_field.json()["img"] == first.json()["img"]
    # An empty prev_frame is a first page, as clients written against the original contract send it.
    empty_prev = post(served, {"prompt": "once upon a time", "prev_frame": "", "seed": 1})
    assert empty_prev.status_code == 200 and empty_prev.json()["img"] == first.json()["img"]
    alone = post(served, payload(characters=()))
    assert alone.status_code == 200, alone.text


def test_same_seed_same_page_and_other_seed_other_page(served):
    a = post(served, payload(seed=11)).json()["img"]
    b = post(served, payload(seed=11)).json()["img"]
    c = post(served, payload(seed=12)).json()["img"]
    assert a == b
    assert a != c


def test_seed_is_drawn_and_reported_when_absent(served):
    body = payload()
    del body["seed"]
    first = post(served, body).json()
    again = post(served, dict(body, seed=first["seed"])).json()
    assert 0 <= first["seed"] < 2**32
    assert again["img"] == first["img"]


def batch_histogram(url) -> tuple[float, float]:
    """Pages drawn and diffusion calls made so far by the model service's `draw` (its adaptive-batch histogram)."""
    name = "bentoml_service_adaptive_batch_size"
    return metric(url, f"{name}_sum", method_name="draw"), metric(url, f"{name}_count", method_name="draw")


def test_concurrent_requests_are_merged_into_batches(served):
    before_sum, before_count = batch_histogram(served)
    # 0 to 3 characters: the number of characters does not split a batch (each acts through its own mask).
    bodies = [
        payload(seed=100 + i, prev=i, characters=tuple(range(20 + i, 20 + i + i % 4)), prompt=f"page {i}")
        for i in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda body: post(served, body), bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    after_sum, after_count = batch_histogram(served)
    pages, batches = after_sum - before_sum, after_count - before_count
    assert pages == 8
    assert batches < 8, "the adaptive batcher ran every request alone"
    # Two requests of each character count: a call of 3 or more pages mixed counts.
    assert max(r.json()["batch_size"] for r in responses) >= 3
    # A batched page is the page its request gets alone. Batch-mates differ in every input, and one input changed
    # moves a tiny page below 25 dB; solo-vs-batched jitter is ~84 dB (tests/test_pipeline.py has the figures).
    alone = png_from_b64(post(served, bodies[3]).json()["img"])
    together = png_from_b64(responses[3].json()["img"])
    assert psnr(alone, together) >= 60


def test_the_model_worker_keeps_a_pages_memory_for_the_next_page(served):
    """glibc handed each page's freed activations back to the OS and the next page faulted them in again: ~56,000
    minor page faults per page of this test, 10-25 % of a tiny page's time (pipeline/host_memory.py). Now a few
    to ~1,400 (Python's own small-object arenas and the pictures' buffers come and go)."""
    worker = model_worker(served)
    assert post(served, payload(seed=31)).status_code == 200  # this shape's working set, once
    before = minor_page_faults(worker)
    for seed in (32, 33, 34):
        assert post(served, payload(seed=seed)).status_code == 200
    per_page = (minor_page_faults(worker) - before) / 3
    assert per_page < 5000, per_page


def test_no_request_is_lost_past_the_model_clients_hundredth_call(served):
    """BentoML's client to a dependency (>= 1.4.31) closes its HTTP session every `runner_connection.max_requests`
    calls (100 by default), cutting the requests in flight on it: they failed with 500 "Server disconnected". Each
    page is two calls of the front's one client (the prompt's moderation, then the drawing), so 64 pages, four at a
    time, are 128 calls: past the 100th with calls in flight."""
    small = {"prompt": "a small page", "characters": [], "width": 64, "height": 64, "steps": 1}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: post(served, dict(small, seed=i)).status_code, range(64)))
    assert statuses == [200] * 64, {status: statuses.count(status) for status in set(statuses)}


def test_health_readiness_and_metrics(served):
    assert requests.get(f"{served}/livez", timeout=5).status_code == 200
    assert requests.get(f"{served}/readyz", timeout=5).status_code == 200
    metrics = requests.get(f"{served}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "bentoml_service_request_total" in metrics.text


def test_openapi_documents_the_contract(served):
    spec = requests.get(f"{served}/docs.json", timeout=5).json()
    body = spec["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) >= {"prev_frame", "characters", "prompt", "seed"}
    assert body["required"] == ["prompt"]
    assert all(body["properties"][name].get("description") for name in ("prev_frame", "characters", "prompt", "seed"))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prev_frame": "this is not base64!"}, "prev_frame"),
        ({"characters": ["aGVsbG8gd29ybGQ="]}, "characters"),  # valid base64, not an image
        ({"seed": -1}, "seed"),
        ({"seed": "forty-two"}, "seed"),
        ({"prompt": ""}, "prompt"),
        ({"regions": [[0, 0, 1, 1]]}, "regions"),  # two characters, one box
        ({"regions": [[0, 0, 0.5, 1], [0.7, 0, 0.6, 1]]}, "regions"),  # x0 >= x1
        ({"regions": [[0, 0, 0.5, 1], [0.5, 0, 1.5, 1]]}, "regions"),  # out of the page
        ({"regions": [[0, 0, 0.5, 1], ["left", 0, 1, 1]]}, "regions"),  # not numbers
        ({"regions": "left and right"}, "regions"),
        ({"quality": "sketchy"}, "quality"),
    ],
)
def test_bad_request_is_a_4xx_naming_the_field_and_the_next_request_succeeds(served, change, field):
    bad = post(served, dict(payload(), **change))
    assert 400 <= bad.status_code < 500
    error = bad.json()
    assert any(detail["loc"][0] == field for detail in error["detail"]), error
    good = post(served, payload(seed=5))
    assert good.status_code == 200


def test_regions_place_each_character(served):
    left, right = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]
    page = post(served, dict(payload(characters=(2, 3)), regions=[left, right]))
    swapped = post(served, dict(payload(characters=(3, 2)), regions=[left, right]))
    swapped_with_boxes = post(served, dict(payload(characters=(3, 2)), regions=[right, left]))
    assert [r.status_code for r in (page, swapped, swapped_with_boxes)] == [200] * 3
    page, swapped, swapped_with_boxes = (png_from_b64(r.json()["img"]) for r in (page, swapped, swapped_with_boxes))
    assert psnr(page, swapped) < 25
    assert psnr(page, swapped_with_boxes) >= 60
    # The seed's request (no regions) is the left-to-right default.
    default = png_from_b64(post(served, payload(characters=(2, 3))).json()["img"])
    assert psnr(page, default) >= 60


def test_bentoml_build_packs_the_tiny_models(tmp_path, bentoml_home, built_bento):
    tag, bento_dir = built_bento
    manifest = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    model_service = next(s for s in manifest["services"] if s["name"] == "picturebook-model")
    assert [m["tag"].split(":")[0] for m in model_service["models"]] == ["picturebook-tiny"]
    envs = {env["name"]: env for env in manifest["envs"]}
    assert envs["PICTUREBOOK_PROFILE"]["value"] == "tiny"
    assert envs["HF_HUB_OFFLINE"]["value"] == "1" and envs["HF_HUB_OFFLINE"]["stage"] == "runtime"
    assert not list((bento_dir / "src").rglob("test_*.py")), "tests were packed into the bento"
    assert not (bento_dir / "src" / "testkit").exists(), "test support was packed into the bento"
    assert (bento_dir / "src" / "serving" / "schemas.py").is_file()
    # The exported bento (what is shipped and what containerize builds from) carries the weights themselves.
    archive = tmp_path / "picturebook.bento"
    bentoml_cli(bentoml_home, "export", tag, str(archive))
    with tarfile.open(archive) as bento:
        names = bento.getnames()
    assert sum(name.endswith(".safetensors") for name in names) >= 6, names
    assert any(name.endswith("sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors") for name in names)
    assert any(name.endswith("Hyper-SD/Hyper-SDXL-8steps-CFG-lora.safetensors") for name in names)  # drafts


def test_model_service_refuses_pickled_bodies(served):
    import pickle

    import httpx

    with httpx.Client(
        transport=httpx.HTTPTransport(uds=model_service_socket(served)), base_url="http://model"
    ) as model:
        refused = model.post(
            "/draw", content=pickle.dumps({"jobs": []}), headers={"Content-Type": "application/vnd.bentoml+pickle"}
        )
        assert refused.status_code == 415
        accepted = model.post("/draw", json={"jobs": [{"prompt": "direct", "seed": 1, "steps": 1}]}, timeout=60)
        assert accepted.status_code == 200 and accepted.json()[0]["img"]


def test_the_model_service_refuses_a_field_the_wire_does_not_have(served):
    import httpx

    with httpx.Client(
        transport=httpx.HTTPTransport(uds=model_service_socket(served)), base_url="http://model"
    ) as model:
        refused = model.post("/draw", json={"jobs": [{"prompt": "direct", "seed": 1, "stpes": 1}]}, timeout=60)
    assert refused.status_code == 400, refused.text
    assert any(d["loc"][-1] == "stpes" for d in refused.json()["detail"]), refused.json()


# --- characters from words: POST /character (serving/characters.py) ----------------------------------------------

FOX = "a small red fox with a blue scarf"


def portrait(url, **body):
    return requests.post(f"{url}/character", json={"description": FOX, **body}, timeout=120)


def test_a_portrait_is_the_same_for_the_same_seed_and_another_for_another(served):
    first, again, other = portrait(served, seed=7), portrait(served, seed=7, name="Pip"), portrait(served, seed=8)
    assert [r.status_code for r in (first, again, other)] == [200] * 3, first.text
    assert first.json()["seed"] == 7 and other.json()["seed"] == 8
    assert png_from_b64(first.json()["img"]).size == (256, 256)  # the page size
    assert first.json()["img"] == again.json()["img"]  # the name is not drawn
    assert psnr(png_from_b64(first.json()["img"]), png_from_b64(other.json()["img"])) < 25
    styled = portrait(served, seed=7, style="watercolour, soft pencil lines")
    assert psnr(png_from_b64(first.json()["img"]), png_from_b64(styled.json()["img"])) < 60  # the style is drawn


def test_a_portrait_is_a_first_page_drawn_from_the_template_and_works_as_a_character(served):
    from serving.characters import DEFAULT_STYLE, PORTRAIT_NEGATIVE, PORTRAIT_TEMPLATE

    drawn = portrait(served, seed=7).json()
    assert drawn["prompt_drawn"] == PORTRAIT_TEMPLATE.format(description=FOX, style=DEFAULT_STYLE)
    as_a_page = post(served, {"prompt": drawn["prompt_drawn"], "negative_prompt": PORTRAIT_NEGATIVE, "seed": 7})
    assert psnr(png_from_b64(drawn["img"]), png_from_b64(as_a_page.json()["img"])) >= 60
    # The portrait as a character picture: a page like any other, the same each time, and the character acts.
    with_pip = {"prompt": "a fox flies a kite", "characters": [drawn["img"]], "seed": 1}
    page, again = post(served, with_pip), post(served, with_pip)
    alone = post(served, dict(with_pip, characters=[]))
    assert [r.status_code for r in (page, again, alone)] == [200] * 3, page.text
    page, again, alone = (png_from_b64(r.json()["img"]) for r in (page, again, alone))
    assert psnr(page, again) >= 60 and psnr(page, alone) < 60


def test_a_refused_description_is_422_naming_it(served):
    refused = portrait(served, description="a n.u.d.e princess", seed=1)
    assert refused.status_code == 422, refused.text
    assert refused.json()["kind"] == "content_refused" and refused.json()["field"] == "description"
    named = portrait(served, name="k1ll yourself", seed=1)
    assert named.status_code == 422 and named.json()["field"] == "name"


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "description"),
        ({"description": ""}, "description"),
        ({"description": "   "}, "description"),
        ({"description": "x" * 401}, "description"),
        ({"description": FOX, "seed": -1}, "seed"),
        ({"description": FOX, "style": "s" * 201}, "style"),
        ({"description": FOX, "width": 100}, "width"),
    ],
)
def test_a_bad_portrait_request_is_400_naming_the_field(served, body, field):
    bad = requests.post(f"{served}/character", json=body, timeout=30)
    assert bad.status_code == 400, bad.text
    assert [d["field"] for d in bad.json()["detail"]] == [field], bad.json()


def test_openapi_documents_the_character_route(served):
    spec = requests.get(f"{served}/docs.json", timeout=5).json()
    body = spec["paths"]["/character"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["description"]
    assert all(body["properties"][name].get("description") for name in ("description", "name", "seed", "style"))
    assert all(body["properties"][name].get("nullable") for name in ("name", "seed", "style"))


def readme_block(section: str, language: str, url: str) -> str:
    readme = (REPO / "README.md").read_text().split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    return re.search(rf"```{language}\n(.+?)\n```", readme, re.S).group(1).replace("localhost:8000", url[7:])


@pytest.mark.parametrize("language, command", [("bash", ["bash", "-c"]), ("python", [sys.executable, "-c"])])
def test_the_readme_character_examples_run_as_written(served, tmp_path, language, command):
    script = readme_block("Characters from words", language, served)
    subprocess.run([*command, script], cwd=tmp_path, check=True, timeout=300)
    expected = post(served, {"prompt": "a fox flies a red kite on a green hill", "seed": 1, "characters": [
        portrait(served, name="Pip", seed=7).json()["img"]]})  # fmt: skip
    assert psnr(Image.open(tmp_path / "page1.png"), png_from_b64(expected.json()["img"])) >= 60


def test_the_portrait_benchmark_measures_a_round(served, tmp_path):
    """`python -m bench.portrait` (docs/PERFORMANCE.md) at its smallest, against this module's server."""
    from bench.portrait import main

    result = main(["--url", served, "--rounds", "1", "--no-warm-up", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "portrait.json").read_text()) == result
    assert set(result["medians"]) >= {"portrait_ms", "first_page_ms", "page_with_portrait_ms"}
    assert result["medians"]["portrait_diffusion_ms"] > 0


# --- `quality: draft` (issue 27): the README's example, run as written against this server


def readme_draft_commands(base_url: str) -> str:
    readme = (REPO / "README.md").read_text()
    script = re.search(r"```bash\n(.+?)\n```", readme.split("**Quick drafts.**", 1)[1], re.S).group(1)
    assert script.count("localhost:8000/generate") == 2 and '"quality": "draft"' in script
    return script.replace("localhost:8000", base_url.removeprefix("http://"))


def test_the_readme_draft_then_final_commands(served, tmp_path):
    script = readme_draft_commands(served)
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    draft, final = (json.loads((tmp_path / name).read_text()) for name in ("draft.json", "final.json"))
    assert draft["seed"] == final["seed"] == 7
    assert psnr(png_from_b64(draft["img"]), png_from_b64(final["img"])) < 25  # another picture, not a copy
    # Each reproducible by its seed, and no `quality` is the final page.
    body = {"prompt": "a fox flies a kite over the hill", "seed": 7}
    again = post(served, dict(body, quality="draft")).json()
    assert psnr(png_from_b64(again["img"]), png_from_b64(draft["img"])) == float("inf")
    unset = post(served, body).json()
    assert psnr(png_from_b64(unset["img"]), png_from_b64(final["img"])) == float("inf")
