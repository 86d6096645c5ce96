"""Safe for children: the prompt filter at the edge, the picture check on every page (diffusers'
StableDiffusionSafetyChecker, a tiny one on this profile), redraw then refuse, fail closed, and the metrics."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import FLAG_MARKER, FLAG_SEED

from pipeline import ModelPaths, PageRequest, load_page_generator
from pipeline.generator import redraw_seed
from pipeline.safety import flagged_fixture
from pipeline.sources import MODEL_REPOS
from testkit.pictures import picture, png_b64
from testkit.server import metric


@pytest.fixture(scope="module")
def served(faults_server):
    """The session's server with the flag marker and seed injected (tests/conftest.py)."""
    return faults_server[0]


def post(url, body):
    return requests.post(f"{url}/generate", json=body, timeout=120)


def pages_drawn(url) -> float:
    return metric(url, "bentoml_service_adaptive_batch_size_sum", method_name="draw")


# --- the picture check, in-process ------------------------------------------------------------------------------


def test_tiny_checker_flags_its_fixture_and_passes_ordinary_pictures(generator):
    ordinary = [picture(i) for i in range(12)]
    assert generator.checker.flagged([flagged_fixture(), *ordinary]) == [True] + [False] * 12


def test_a_drawn_page_passes_the_check_and_its_cost_is_timed(generator):
    [page] = generator.generate([PageRequest(prompt="a fox in a garden", prev_frame=picture(1), seed=3)])
    assert page.ok and not page.flagged and page.flagged_draws == 0
    assert "safety_check" in page.timings_ms


def test_the_checker_is_the_one_the_loading_path_loads(tiny_dir, tiny_settings, tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    folder = tiny_dir / MODEL_REPOS["safety_checker"].folder
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    # Fail closed: without the checker's weights the models do not load at all...
    partial = tmp_path / "models"
    shutil.copytree(tiny_dir, partial, ignore=shutil.ignore_patterns(MODEL_REPOS["safety_checker"].folder))
    with pytest.raises(OSError):
        load_page_generator(ModelPaths.under(partial), tiny_settings.model_copy(update={"model_dir": partial}))
    # ...unless the checker is turned off, explicitly.
    off = load_page_generator(
        ModelPaths.under(partial), tiny_settings.model_copy(update={"model_dir": partial, "safety_checker": False})
    )
    assert off.checker is None
    assert StableDiffusionSafetyChecker.__name__ == "StableDiffusionSafetyChecker"


# --- over HTTP ------------------------------------------------------------------------------------------------


def test_a_refused_prompt_is_422_naming_the_field_and_nothing_is_drawn(served):
    before = pages_drawn(served), metric(served, "picturebook_content_refusals_total", kind="prompt_refused")
    refused = post(served, {"prompt": "a n.u.d.e picture of the princess", "seed": 1})
    assert refused.status_code == 422
    body = refused.json()
    assert body["kind"] == "content_refused" and body["field"] == "prompt" and "nude" not in body["error"]
    after = pages_drawn(served), metric(served, "picturebook_content_refusals_total", kind="prompt_refused")
    assert after[0] == before[0], "the model service drew a page for a refused prompt"
    assert after[1] == before[1] + 1
    # negative_prompt is not filtered: it is how people steer away from things.
    steered = post(served, {"prompt": "a knight meets a dragon", "negative_prompt": "no blood, no nudity", "seed": 1})
    assert steered.status_code == 200, steered.text


def test_a_refused_page_text_in_a_book_is_refused_at_submit(served):
    before = pages_drawn(served)
    pages = [{"text": "The wolf knocks on grandmother's door."}, {"text": "他们看色情图片"}]
    refused = requests.post(f"{served}/book/submit", json={"title": "Red Riding Hood", "pages": pages}, timeout=30)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "pages[1].text" and refused.json()["kind"] == "content_refused"
    assert pages_drawn(served) == before
    title = requests.post(f"{served}/book/submit", json={"title": "k1ll yourself", "pages": pages[:1]}, timeout=30)
    assert title.status_code == 422 and title.json()["field"] == "title"


def test_a_flagged_page_is_redrawn_with_a_derived_seed(served):
    before = metric(served, "picturebook_content_refusals_total", kind="picture_flagged")
    answer = post(served, {"prompt": "a hedgehog reads a map", "seed": FLAG_SEED})
    assert answer.status_code == 200, answer.text
    assert answer.json()["seed"] == redraw_seed(FLAG_SEED, 1), "the redraw's seed is the one reported"
    assert metric(served, "picturebook_content_refusals_total", kind="picture_flagged") == before + 1


def test_a_page_still_flagged_is_refused_while_its_batch_mates_return(served):
    before = (
        metric(served, "picturebook_content_refusals_total", kind="picture_flagged"),
        metric(served, "picturebook_content_refusals_total", kind="picture_refused"),
    )
    bodies = [
        {"prompt": f"page {i} of a quiet book", "prev_frame": png_b64(picture(i)), "seed": i} for i in range(3)
    ] + [{"prompt": f"a {FLAG_MARKER} page", "prev_frame": png_b64(picture(9)), "seed": 9}]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: post(served, body), bodies))
    assert [a.status_code for a in answers] == [200, 200, 200, 422], [a.text[:200] for a in answers]
    assert answers[3].json()["kind"] == "content_refused"
    after = (
        metric(served, "picturebook_content_refusals_total", kind="picture_flagged"),
        metric(served, "picturebook_content_refusals_total", kind="picture_refused"),
    )
    assert after == (before[0] + 2, before[1] + 1), "drawn, flagged, redrawn, flagged again, refused"


def test_metrics_show_the_checker_is_on(served):
    assert metric(served, "picturebook_safety_checker_enabled") == 1


def test_the_service_never_becomes_ready_without_the_checkers_weights(fail_closed_starts):
    """The picture checker's folder is missing: the log names it and /readyz never answers 200. Started alongside
    the moderation model's fail-closed start (tests/conftest.py, fail_closed_starts)."""
    failure = fail_closed_starts["safety_checker"]
    if failure is not None:
        raise failure
