"""The prompt filter: the two corpora, every normalisation it promises, list files and the operator's extra lists."""

import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.prompt_filter import (
    DEFAULT_SAFE_NEGATIVE_PROMPT,
    REFUSAL_MESSAGE,
    PromptFilter,
    load_list_file,
    with_safe_negative,
)

DATA = Path(__file__).resolve().parent / "data"


def _unescape(text: str) -> str:
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _lines(name: str) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


OK_PROMPTS = _lines("prompts_ok.txt")
HARMFUL_PROMPTS = [tuple(_unescape(line).split("\t")) for line in _lines("prompts_harmful.txt")]


DEFAULT_FILTER = PromptFilter.default()  # read-only once built; shared by the hypothesis tests too


@pytest.fixture(scope="module")
def default_filter() -> PromptFilter:
    return DEFAULT_FILTER


def _is_chinese(text: str) -> bool:
    return re.search(r"[\u4e00-\u9fff]", text) is not None


def test_the_corpora_are_big_enough_and_bilingual():
    assert len(OK_PROMPTS) >= 60 and len(HARMFUL_PROMPTS) >= 60
    for corpus in (OK_PROMPTS, [text for _, text in HARMFUL_PROMPTS]):
        chinese = sum(_is_chinese(text) for text in corpus)
        assert 20 <= chinese <= len(corpus) - 20
    assert {category for category, _ in HARMFUL_PROMPTS} >= {"sexual", "minors", "gore", "self_harm", "hate"}


def test_every_ordinary_childrens_story_prompt_passes(default_filter):
    refused = {text: default_filter.check(text) for text in OK_PROMPTS}
    refused = {text: refusal for text, refusal in refused.items() if refusal is not None}
    print(
        f"\nordinary prompts passed: {len(OK_PROMPTS) - len(refused)}/{len(OK_PROMPTS)} "
        f"({100 * (len(OK_PROMPTS) - len(refused)) / len(OK_PROMPTS):.1f} %)"
    )
    assert refused == {}


def test_every_harmful_prompt_is_refused(default_filter):
    missed = [(category, text) for category, text in HARMFUL_PROMPTS if default_filter.check(text) is None]
    totals = Counter(category for category, _ in HARMFUL_PROMPTS)
    missed_by_category = Counter(category for category, _ in missed)
    print(
        f"\nharmful prompts refused: {len(HARMFUL_PROMPTS) - len(missed)}/{len(HARMFUL_PROMPTS)} "
        f"({100 * (len(HARMFUL_PROMPTS) - len(missed)) / len(HARMFUL_PROMPTS):.1f} %)"
    )
    for category, total in sorted(totals.items()):
        print(f"  {category}: {total - missed_by_category[category]}/{total}")
    assert missed == []


def test_a_refusal_names_its_list_entry_for_the_logs_but_the_user_message_does_not(default_filter):
    refusal = default_filter.check("a N.U.D.E model")
    assert (refusal.category, refusal.term, refusal.source) == ("nudity", "nude", "en.txt")
    assert "nude" in str(refusal)
    assert "nude" not in REFUSAL_MESSAGE.lower()


@pytest.mark.parametrize(
    "text",
    [
        "nude",
        "NUDE",  # case
        "ＮＵＤＥ",  # full-width letters (NFKC)
        "𝐧𝐮𝐝𝐞",  # mathematical bold (NFKC)
        "ⓝⓤⓓⓔ",  # circled letters (NFKC)
        "nu\u200bde",  # zero-width space
        "nu\u200cde",  # zero-width non-joiner
        "nu\u200dde",  # zero-width joiner
        "nu\u2060de",  # word joiner
        "nu\ufeffde",  # byte order mark
        "nu\u00adde",  # soft hyphen
        "n\u0336u\u0336d\u0336e\u0336",  # combining strike-through
        "nüdé",  # accents
        "nud\u0435",  # Cyrillic e
        "\u0455\u0435\u0445",  # all three letters Cyrillic look-alikes
        "n.u.d.e",
        "n u d e",
        "n-u-d-e",
        "n_u_d_e",
        "n . u . d . e",
        "N*U*D*E",
        "nud3",
        "NuD3",
        "nuuuude",
        "nudes",  # plural s
        "a n u d e woman",  # a spelled-out word after an article
        "画一个nude的人",  # an English term glued to Chinese
        "s3x",
        "$ex",
        "5 e x",
        "pr0n",
        "l0l1",  # 1 read as i
        "s.u.i.c.i.d.e",
        "i n c e s t",  # a spelled-out word that starts with i
    ],
)
def test_obfuscated_spellings_are_refused(default_filter, text):
    assert default_filter.check(text) is not None, text


@pytest.mark.parametrize(
    "text",
    [
        "class",
        "grape",
        "Sussex",
        "Essex",
        "sextant",
        "therapist",
        "assassin",
        "Scunthorpe",
        "cocktail",
        "the heroines",  # "heroin" + "es" is not a plural of "heroin"
        "pedometer",
        "character 1 on the left",
        "character 1 and character 2",
        "3 little pigs, 7 dwarfs, 1st place, 4th of July",
        "page 5: the A B C book",
        "the U.S.A. flag",
        "Zzzz, the bear sleeps; brrr, it is cold",
        "Al Gore plants a tree",
        "nudge the door",
        "左边是角色1，右边是角色2",
        "",
    ],
)
def test_ordinary_words_are_not_refused(default_filter, text):
    assert default_filter.check(text) is None, default_filter.check(text)


def test_english_matches_whole_words_and_chinese_matches_substrings(default_filter):
    assert default_filter.check("Sussex") is None and default_filter.check("sex") is not None
    assert default_filter.check("a heroine") is None and default_filter.check("heroin") is not None
    assert default_filter.check("一张色情图片") is not None  # no spaces: found inside the sentence
    assert default_filter.check("一张色 情图片") is not None  # separators are dropped between Chinese characters


def test_an_allowed_word_overlapping_a_hit_cancels_it(default_filter):
    assert default_filter.check("角色情绪很开心") is None  # 角色 + 情绪, not 色情
    assert default_filter.check("色情图片") is not None
    assert default_filter.check("a field of oilseed rape") is None
    assert default_filter.check("rape") is not None


def test_the_operators_directory_adds_terms_and_exceptions(tmp_path):
    (tmp_path / "en-extra.txt").write_text(
        "# the operator's own words\n\n   \n[vegetables]\nbroccoli\nbrussels sprout\n[allow]\nlingerie\n",
        encoding="utf-8",
    )
    (tmp_path / "notes.md").write_text("broccoli is not a list: only *.txt files are read\n", encoding="utf-8")
    extended = PromptFilter.default(tmp_path)

    refusal = extended.check("a plate of Brussels sprouts")
    assert (refusal.category, refusal.term, refusal.source) == ("vegetables", "brussels sprout", "en-extra.txt")
    assert extended.check("b r o c c o l i") is not None
    assert extended.check("the operator's own words") is None  # comment lines are not terms
    assert extended.check("nude") is not None  # the repository's lists still apply
    assert extended.check("lingerie") is None  # an [allow] entry lifts a default term
    assert PromptFilter.default().check("broccoli") is None


def test_a_list_file_says_how_it_matches(tmp_path):
    (tmp_path / "ja.txt").write_text("[sexual]\nエロ\n", encoding="utf-8")  # ja: a substring language
    (tmp_path / "custom.txt").write_text("#!match: substring\n[custom]\n咒语\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_text("\ufeff[custom]\nmot interdit\n", encoding="utf-8")  # a BOM is accepted
    custom = PromptFilter.from_dirs([tmp_path])
    assert custom.check("エロ画像") is not None
    assert custom.check("念咒语的人") is not None
    assert custom.check("un Mot   Interdit!") is not None
    assert custom.check("motinterdit") is None
    assert load_list_file(tmp_path / "fr.txt").terms == {"custom": ["mot interdit"]}


def test_bad_list_files_and_directories_fail_loudly(tmp_path):
    with pytest.raises(FileNotFoundError):
        PromptFilter.from_dirs([tmp_path / "missing"])
    (tmp_path / "en.txt").write_bytes(b"\xff\xfe nude")
    with pytest.raises(ValueError, match="UTF-8"):
        PromptFilter.from_dirs([tmp_path])
    (tmp_path / "en.txt").write_text("#!match: sometimes\n", encoding="utf-8")
    with pytest.raises(ValueError, match="match"):
        PromptFilter.from_dirs([tmp_path])
    assert PromptFilter.from_dirs([None, ""]).check("nude") is None  # no lists: nothing is refused


def test_first_refusal_names_the_field(default_filter):
    book = [
        ("title", "The Dragon and the Knight"),
        ("pages[0].text", "Once upon a time a knight met a dragon."),
        ("pages[0].prompt", "a knight and a dragon, character 1 on the left"),
        ("pages[1].text", None),
        ("pages[1].prompt", ""),
        ("pages[2].text", "Then everyone was n.u.d.e"),
        ("pages[2].prompt", "a dragon eating a nude knight"),
    ]
    field, refusal = default_filter.first_refusal(book)
    assert field == "pages[2].text" and refusal.category == "nudity"
    assert default_filter.first_refusal(book[:5]) is None
    assert default_filter.first_refusal([("prompt", "两个角色在花园中交谈")]) is None
    assert default_filter.first_refusal([("prompt", "裸体")])[0] == "prompt"


def test_the_safe_negative_prompt_goes_first_once_and_can_be_turned_off():
    assert with_safe_negative("") == DEFAULT_SAFE_NEGATIVE_PROMPT
    assert with_safe_negative("blurry, text") == DEFAULT_SAFE_NEGATIVE_PROMPT + ", blurry, text"
    assert with_safe_negative("blurry", "nudity, gore") == "nudity, gore, blurry"
    assert with_safe_negative("Nudity, blurry", "nudity, gore") == "gore, Nudity, blurry"  # not repeated
    assert with_safe_negative("gore, nudity", "nudity, gore") == "gore, nudity"
    assert with_safe_negative("blurry", "") == "blurry"  # empty: off
    assert with_safe_negative("blurry", " , ") == "blurry"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=2000))
def test_any_text_is_checked_without_error(text):
    result = DEFAULT_FILTER.check(text)
    assert result is None or result.category


@settings(max_examples=100, deadline=None)
@given(
    term=st.sampled_from(["nude", "porn", "gore", "suicide", "cocaine", "hentai"]),
    data=st.data(),
)
def test_invisible_characters_and_case_never_hide_a_term(term, data):
    spelled = ""
    for char in term:
        spelled += data.draw(st.sampled_from([char, char.upper(), chr(ord(char) - ord("a") + ord("ａ"))]))
        spelled += data.draw(st.sampled_from(["", "\u200b", "\u200d", "\u2060", "\u00ad", "\ufeff"]))
    assert DEFAULT_FILTER.check(f"a picture of {spelled} in a book") is not None, spelled
