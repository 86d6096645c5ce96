"""Chinese prompts translated into English before the text encoders (tiny MarianMT: the real tokenizer, model and
`generate`, random weights, so its "English" is gibberish; the tests read whatever `prompt_drawn` says)."""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests
from pypdf import PdfReader

from pipeline.generator import PageGenerator
from pipeline.page import PageRequest
from pipeline.translation import chinese_spans, has_chinese
from testkit.pictures import png_from_b64, psnr

CHINESE = "两个角色在花园中交谈，左边是角色1，右边是角色2"  # the seed's example prompt
MIXED = "a 小狐狸 with a kite"
SMALL = {"width": 64, "height": 64, "steps": 2}


def page(prompt, seed=7, **change):
    return PageRequest(prompt=prompt, seed=seed, **{**SMALL, **change})


@pytest.fixture
def counted(generator, monkeypatch):
    """The shared generator, its translator's model calls and its diffusion calls counted, its cache emptied."""
    translator = generator.translator
    monkeypatch.setattr(translator, "_cache", type(translator._cache)())
    calls = {"translate": [], "diffusion": 0}
    translate, draw = translator.generate, generator.generate_group

    def counted_translate(pieces):
        calls["translate"].append(list(pieces))
        return translate(pieces)

    def counted_draw(requests):
        calls["diffusion"] += 1
        return draw(requests)

    monkeypatch.setattr(translator, "generate", counted_translate)
    monkeypatch.setattr(generator, "generate_group", counted_draw)
    return generator, calls


def test_the_rule_for_which_text_is_translated():
    assert has_chinese(CHINESE) and has_chinese(MIXED) and not has_chinese("a fox, 2 kites (red) & a hill!")
    assert chinese_spans(CHINESE) == [(CHINESE, True)]  # no Latin word: translated whole, digits and all
    assert chinese_spans(MIXED) == [("a", False), (" 小狐狸 ", True), ("with a kite", False)]
    assert [p for p, t in chinese_spans("小明和Tom去公园, character 1 在左边") if t] == [
        "小明和",
        "去公园, ",
        " 在左边",
    ]


def test_a_chinese_prompts_page_equals_the_page_of_its_prompt_drawn(counted):
    generator, calls = counted
    [chinese] = generator.generate([page(CHINESE)])
    assert chinese.ok and chinese.prompt_drawn and not has_chinese(chinese.prompt_drawn)
    assert chinese.prompt_drawn != CHINESE
    [english] = generator.generate([page(chinese.prompt_drawn)])
    assert english.prompt_drawn == chinese.prompt_drawn
    assert psnr(chinese.image, english.image) >= 60
    assert len(calls["translate"]) == 1, "the English prompt_drawn is not translated again"


def test_an_english_prompt_is_not_translated_and_calls_no_model(counted):
    generator, calls = counted
    [result] = generator.generate([page("a fox finds a red kite", negative_prompt="blurry")])
    assert result.prompt_drawn == "a fox finds a red kite"
    assert calls["translate"] == []


def test_a_mixed_prompt_translates_only_its_chinese(counted):
    generator, calls = counted
    [result] = generator.generate([page(MIXED)])
    assert calls["translate"] == [["小狐狸"]]
    assert result.prompt_drawn.startswith("a ") and result.prompt_drawn.endswith(" with a kite")
    assert result.prompt_drawn != MIXED and not has_chinese(result.prompt_drawn)


def test_the_same_prompt_twice_is_translated_once(counted):
    generator, calls = counted
    hits = generator.translator.hits
    first, second = (generator.generate([page(CHINESE, seed=seed)])[0] for seed in (1, 2))
    assert first.prompt_drawn == second.prompt_drawn
    assert len(calls["translate"]) == 1 and generator.translator.hits == hits + 1


def test_the_negative_prompt_is_translated_too(counted):
    generator, calls = counted
    [result] = generator.generate([page("a garden", negative_prompt="模糊, blurry")])
    assert calls["translate"] == [["模糊,"]]
    assert result.prompt_drawn == "a garden"


def test_eight_pages_in_mixed_languages_are_one_translation_and_one_diffusion_call(counted):
    generator, calls = counted
    prompts = [CHINESE, "a fox", MIXED, "小熊在睡觉", "a bear sleeps", "兔子读书", "the moon", "月亮和星星"]
    results = generator.generate([page(prompt, seed=i) for i, prompt in enumerate(prompts)])
    assert all(r.ok for r in results)
    assert calls["diffusion"] == 1 and {r.batch_size for r in results} == {8}
    assert len(calls["translate"]) == 1
    assert sorted(calls["translate"][0]) == sorted([CHINESE, "小狐狸", "小熊在睡觉", "兔子读书", "月亮和星星"])
    for prompt, result in zip(prompts, results):
        assert (result.prompt_drawn == prompt) is (not has_chinese(prompt)), prompt


def test_translation_off_draws_the_text_as_written(generator):
    off = PageGenerator(generator.pipe, generator.depth, generator.settings, generator.spec, translator=None)
    [as_written] = off.generate([page(CHINESE)])
    assert as_written.prompt_drawn == CHINESE
    [translated] = generator.generate([page(CHINESE)])
    assert translated.prompt_drawn != CHINESE
    assert psnr(as_written.image, translated.image) < 40
    assert off.translate([CHINESE, "a fox"]) == [CHINESE, "a fox"]


def test_the_same_request_gives_the_same_page_and_words(generator):
    first, second = (generator.generate([page(MIXED)])[0] for _ in range(2))
    assert first.prompt_drawn == second.prompt_drawn and psnr(first.image, second.image) == float("inf")


# ---------------------------------------------------------------------------------------------------------------------
# Through the real server (tiny profile, the wire and the public schemas)


@pytest.fixture(scope="module")
def served(tiny_server):
    """Translation is on by default: the session's shared server (tests/conftest.py)."""
    return tiny_server[0]


def test_generate_reports_prompt_drawn_and_draws_it(served):
    chinese = requests.post(f"{served}/generate", json={"prompt": CHINESE, "seed": 42, **SMALL}, timeout=120)
    assert chinese.status_code == 200, chinese.text
    drawn = chinese.json()["prompt_drawn"]
    assert drawn and drawn != CHINESE and not has_chinese(drawn)
    english = requests.post(f"{served}/generate", json={"prompt": drawn, "seed": 42, **SMALL}, timeout=120).json()
    assert english["prompt_drawn"] == drawn
    assert psnr(png_from_b64(chinese.json()["img"]), png_from_b64(english["img"])) >= 60


def test_a_books_text_is_unchanged_in_the_result_and_the_pdf(served):
    pages = [
        {"text": "小狐狸找到一只红色的风筝。", "seed": 1},
        {"text": "The fox flies it.", "prompt": MIXED, "seed": 2},
    ]
    body = {"title": "风筝", "pages": pages, **SMALL}
    submitted = requests.post(f"{served}/book/submit", json=body, timeout=30)
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    for _ in range(1200):
        status = requests.get(f"{served}/book/status", params={"task_id": task_id}, timeout=10).json()["status"]
        if status != "in_progress":
            break
        time.sleep(0.1)
    result = requests.get(f"{served}/book/get", params={"task_id": task_id}, timeout=30).json()
    assert result["status"] == "completed", result
    first, second = result["pages"]
    assert first["text"] == pages[0]["text"] and second["text"] == pages[1]["text"]
    assert first["prompt_drawn"] != pages[0]["text"] and not has_chinese(first["prompt_drawn"])
    assert second["prompt_drawn"].endswith(" with a kite")
    reader = PdfReader(io.BytesIO(base64.b64decode(result["pdf"])))
    for pdf_page, request_page in zip(reader.pages[1:], pages):
        assert request_page["text"] in pdf_page.extract_text().replace("\n", " ")


def test_the_tiny_translator_is_the_same_bytes_every_build(tmp_path):
    import hashlib

    import torch

    from pipeline.tiny import write_tiny_translator

    def build(folder):
        torch.manual_seed(0)
        write_tiny_translator(folder)
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}

    first = build(tmp_path / "a")
    assert first == build(tmp_path / "b")
    assert {"source.spm", "target.spm", "vocab.json", "model.safetensors", "config.json"} <= set(first)


def test_the_sdxl_translator_is_pinned_and_read_without_arbitrary_pickles():
    from pathlib import Path

    from pipeline.sources import MODEL_REPOS

    repo = MODEL_REPOS["translator"]
    assert repo.repo_id == "Helsinki-NLP/opus-mt-zh-en" and len(repo.revision) == 40
    source = (Path(__file__).resolve().parent.parent / "pipeline" / "translation.py").read_text()
    assert "weights_only=True" in source
