"""Prompt filter: refuses harmful user text before any model work, and the child-safe negative prompt.

Plain Python (no BentoML, no torch), so the front service can check a request before it calls the model service.

Lists are UTF-8 text files, one term or phrase per line (see `load_list_file`). A file's language decides how its
terms match: whole words and phrases for languages written with spaces (`en.txt`: "sex" does not refuse "Sussex"),
substrings for languages written without them (`zh.txt`: "色情" is found inside "色情图片"). A list's `[allow]`
section names ordinary words that overlap a blocked term ("角色情绪" = "character's mood" contains "色情").
A term with a Latin letter matches as a whole word in every list, also in a substring list: "tm" in zh.txt must
not refuse every English word with a "tm" inside.

A term may end or start with `*` to match inside longer words, for stems no English word holds innocently:
`fuck*` refuses "fuckwit", `*fuck*` refuses "clusterfuck" too; a whole word in `[allow]` lifts it ("scunthorpe").
The stem alone (and with a plural "s") is left to the plain terms, with their phrases and exceptions.

Besides terms, a list has context rules for words that are innocent alone: `blood + pool of|dripping` refuses a
sentence where both parts occur ("a pool of blood"), not "three drops of blood fell on the snow". Braces give
alternatives inside a term (`naked {woman|women}`), and `$name = a|b|c` names a set of alternatives for later lines.

Matching sees through the usual ways of slipping past a list: Unicode compatibility forms (full-width and
mathematical letters), case, invisible characters, combining marks, Cyrillic/Greek look-alike letters, separators
inside a word ("n.u.d.e", "n u d e", "n_u_d_e"), digits and symbols for letters ("s3x", "$ex", "pr0n"), stretched
letters ("nuuude") and a plural "s".
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

DEFAULT_BLOCKLIST_DIR = Path(__file__).resolve().parent / "blocklists"

# Short on purpose: SDXL's text encoders read 77 tokens, so this stays well inside the window it is put first in.
DEFAULT_SAFE_NEGATIVE_PROMPT = (
    "nsfw, nudity, sexual content, suggestive, gore, blood, graphic violence, disturbing, horror"
)

# What the user is told. It does not repeat the matched term: the answer may be shown on a child's screen, and
# naming the term would let anyone probe the list spelling by spelling. The field name already points at the text.
REFUSAL_MESSAGE = (
    "This text was refused by the content filter. Please rephrase it; "
    "things to keep out of the picture belong in negative_prompt."
)

# Languages written without spaces between words: their list terms match anywhere, not as whole words.
SUBSTRING_LANGUAGES = frozenset({"zh", "ja", "ko", "th", "lo", "km", "my", "yue", "wuu"})

ALLOW_SECTION = "allow"
UNSORTED_CATEGORY = "unsorted"  # terms listed before any [section]

_MATCH_DIRECTIVE = re.compile(r"#!\s*match\s*:\s*(\w+)\s*$")
_SECTION = re.compile(r"\[\s*([\w-]+)\s*\]$")
_SET_DEFINITION = re.compile(r"\$(\w+)\s*=\s*(.+)$")
_SET_REFERENCE = re.compile(r"\$(\w+)")
_RULE_JOIN = " + "  # between the parts of a context rule
_RULE_SPLIT = re.compile(r"\s+\+(?=\s|$)\s*")
_WORD_PART = re.compile(r"(\*?)([^\W\d_]{3,})\*$")  # `fuck*` or `*fuck*`: a stem of three letters or more
_MAX_EXPANSIONS = 5000  # one line's terms after its braces are expanded: a typo must not build millions
# A context rule's parts must occur in the same sentence; prompts are mostly one sentence of comma-joined phrases.
_SENTENCE_END = re.compile(r"[!?;\n\u3002\uff01\uff1f\uff1b\u2026]+|\.(?=\s|$)")

# Scripts written without spaces: each character is a word of its own for whole-word matching, so an English
# term glued to Chinese text ("画一个nude的人") is still a whole word.
_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
)
_NOT_CJK = f"(?![{_CJK}])"
# Words for the plain reading: letters and digits apart ("nude18" -> "nude", "18").
_PLAIN_WORD = re.compile(rf"[{_CJK}]|(?:{_NOT_CJK}[^\W\d_])+|\d+")
# Words for the digits-for-letters reading: letters and digits together ("s3x").
_LEET_WORD = re.compile(rf"[{_CJK}]|(?:{_NOT_CJK}[^\W_])+")
_LETTERS = re.compile(r"[^\W\d_]+")
_ASCII_LETTER = re.compile(r"[a-z]")
_STRETCHED = re.compile(r"([a-z])\1{2,}")  # no English word has a letter three times in a row
_NOT_WORD = re.compile(r"[\W_]+")
_ONE_CJK = re.compile(f"[{_CJK}]")

# Invisible characters people put inside words: all of category Cf (zero-width space and joiners, U+2060, U+FEFF,
# the soft hyphen, bidi controls, tag characters), plus the marks and fillers below.
_INVISIBLE_RANGES = (
    (0x0300, 0x036F),  # combining diacritics, strike-through and underline marks, the grapheme joiner
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF),  # combining marks for symbols (enclosing circles and keycaps)
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFE20, 0xFE2F),
    (0xE0100, 0xE01EF),
    (0x115F, 0x1160),  # Hangul fillers, which render as nothing
    (0x3164, 0x3164),
    (0xFFA0, 0xFFA0),
)


def _invisible_pattern() -> re.Pattern[str]:
    # Category Cf lives in planes 0, 1 and 14 only; one scan at import builds a character class.
    format_chars = [
        chr(code)
        for plane in (range(0x0000, 0x20000), range(0xE0000, 0xE1000))
        for code in plane
        if unicodedata.category(chr(code)) == "Cf"
    ]
    ranges = "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _INVISIBLE_RANGES)
    return re.compile("[" + "".join(re.escape(char) for char in format_chars) + ranges + "]+")


_INVISIBLE = _invisible_pattern()

# Cyrillic and Greek letters drawn like Latin ones ("nudе" with a Cyrillic е). Swapped only in a word that also has
# a Latin letter, or that is made of nothing but look-alikes, so real Russian or Greek words stay as they are.
_LOOKALIKE_TABLE = str.maketrans(
    "аеёһіїјкӏорԛѕухԁԝсαβεηικνορτυχı",
    "aeehiijklopqsyxdwcabenikvoptuxi",
)
_LOOKALIKES = frozenset(chr(code) for code in _LOOKALIKE_TABLE)
_ANY_LOOKALIKE = re.compile("[" + "".join(sorted(_LOOKALIKES)) + "]")

# Digits for letters, used only inside a word that has a Latin letter: "character 1" keeps its "1", "s3x" does not
# keep its "3". "1" and "|" read as "i" or "l"; both readings are tried.
_ONE_READS_AS = ("i", "l")
_DIGIT_LETTERS = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
_DIGITS_AS = {one: str.maketrans({**_DIGIT_LETTERS, "1": one}) for one in _ONE_READS_AS}
# Symbols for letters. "!" and "|" only count before a letter or digit ("sh!t"), so "nude!" keeps its exclamation.
_SYMBOLS_AS = {
    one: (
        (re.compile(r"!(?=[^\W_])"), "i"),
        (re.compile(r"\|(?=[^\W_])"), one),
        (re.compile(r"@"), "a"),
        (re.compile(r"\$"), "s"),
    )
    for one in _ONE_READS_AS
}
_LEET_CHARS = re.compile(r"[0-9@$!|]")

# Separators a spelled-out word may have between its letters ("n . u . d . e" has three).
_MAX_SPELLING_GAP = 3
_MIN_SPELLED_LETTERS = 3
_NEXT_SPELLED_LETTER = rf"[\W_]{{1,{_MAX_SPELLING_GAP}}}[^\W_](?![^\W_])"
_SPELLED_RUN = re.compile(rf"(?<![^\W_])[^\W_](?:{_NEXT_SPELLED_LETTER}){{{_MIN_SPELLED_LETTERS - 1}}}")
# "a" or "i" before a spelled-out word: the only case where reading it as an article changes anything.
_SPELLED_AFTER_ARTICLE = re.compile(rf"(?<![^\W_])[ai](?:{_NEXT_SPELLED_LETTER}){{{_MIN_SPELLED_LETTERS}}}")


@dataclass(frozen=True)
class Refusal:
    """Why a text was refused: for logs and metrics, not for the user (see REFUSAL_MESSAGE)."""

    category: str  # the list section, e.g. "sexual", "gore"
    term: str  # the list entry that matched, normalised
    source: str  # the list file, e.g. "en.txt"

    def __str__(self) -> str:
        return f"{self.category}: {self.term!r} ({self.source})"


@dataclass(frozen=True)
class ListFile:
    """One parsed list file."""

    path: Path
    substring: bool  # how its terms match: anywhere (True) or as whole words and phrases (False)
    terms: dict[str, list[str]]  # category -> terms, braces expanded; ALLOW_SECTION holds the exceptions
    # category -> context rules; a rule is its parts, a part its alternatives (braces expanded)
    rules: dict[str, list[tuple[tuple[str, ...], ...]]] = field(default_factory=dict)


def normalise(text: str) -> str:
    """The text as the matcher reads it: compatibility forms folded, lower case, invisible characters removed."""
    if text.isascii():  # nothing to fold, drop or swap in ASCII: the steps below would give lower() exactly
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    # Decomposed first, so an accent or strike-through mark comes apart from its letter and can be dropped.
    # is_normalized is a quick check: Chinese text and plain letters skip both rewrites, and the result is the same.
    if not unicodedata.is_normalized("NFKD", text):
        text = unicodedata.normalize("NFKD", text)
    text = _INVISIBLE.sub("", text)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return _LETTERS.sub(_unmask_lookalikes, text) if _ANY_LOOKALIKE.search(text) else text


def _unmask_lookalikes(word: re.Match[str]) -> str:
    text = word.group()
    swapped = text.translate(_LOOKALIKE_TABLE)
    if swapped == text:
        return text
    has_latin = _ASCII_LETTER.search(text) is not None
    all_lookalikes = all(char in _LOOKALIKES for char in text)
    return swapped if has_latin or all_lookalikes else text


def _join_spelled_out(text: str, words: list[re.Match[str]], keep_leading_article: bool) -> tuple[list[str], list[int]]:
    """The words, with runs of single letters between separators joined: "n.u.d.e" -> "nude"; and where in `text`
    each word starts (context rules place a word in its sentence by it).

    `keep_leading_article` leaves a leading "a" or "i" of such a run on its own ("a n u d e" -> "a", "nude"), the
    other reading keeps it ("i n c e s t" -> "incest"); the caller tries both.
    """
    if not _SPELLED_RUN.search(text):
        return [word.group() for word in words], [word.start() for word in words]
    out: list[str] = []
    starts: list[int] = []
    run: list[str] = []
    run_starts: list[int] = []

    def flush() -> None:
        if len(run) >= _MIN_SPELLED_LETTERS:
            if keep_leading_article and run[0] in ("a", "i") and len(run) > _MIN_SPELLED_LETTERS:
                out.extend((run[0], "".join(run[1:])))
                starts.extend((run_starts[0], run_starts[1]))
            else:
                out.append("".join(run))
                starts.append(run_starts[0])
        else:
            out.extend(run)
            starts.extend(run_starts)
        run.clear()
        run_starts.clear()

    previous_end = None
    for word in words:
        token = word.group()
        spellable = len(token) == 1 and not _ONE_CJK.match(token)
        gap = text[previous_end : word.start()] if previous_end is not None else ""
        if spellable and run and 1 <= len(gap) <= _MAX_SPELLING_GAP:
            run.append(token)
            run_starts.append(word.start())
        else:
            flush()
            if spellable:
                run.append(token)
                run_starts.append(word.start())
            else:
                out.append(token)
                starts.append(word.start())
        previous_end = word.end()
    flush()
    return out, starts


def _word_readings(text: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every reading of a normalised text as a sequence of words that the whole-word lists are matched against,
    each with where its words start in `text` (letters are swapped one for one, so a reading keeps the places)."""
    sources: list[tuple[str, re.Pattern[str], dict[int, str] | None]] = [(text, _PLAIN_WORD, None)]
    if _LEET_CHARS.search(text):
        for one in _ONE_READS_AS:
            swapped = text
            for pattern, letter in _SYMBOLS_AS[one]:
                swapped = pattern.sub(letter, swapped)
            sources.append((swapped, _LEET_WORD, _DIGITS_AS[one]))

    readings: dict[tuple[str, ...], tuple[int, ...]] = {}
    for source, word_pattern, digits in sources:
        words = list(word_pattern.finditer(source))
        for keep_article in (False, True) if _SPELLED_AFTER_ARTICLE.search(source) else (False,):
            tokens, starts = _join_spelled_out(source, words, keep_article)
            if digits is not None:
                tokens = [t.translate(digits) if _ASCII_LETTER.search(t) else t for t in tokens]
            places = tuple(starts)
            readings.setdefault(tuple(tokens), places)
            if _STRETCHED.search(" ".join(tokens)):  # a space is no letter: no run crosses two words
                readings.setdefault(tuple(_STRETCHED.sub(r"\1", t) for t in tokens), places)
                readings.setdefault(tuple(_STRETCHED.sub(r"\1\1", t) for t in tokens), places)
    return readings


def _squeezed(text: str) -> str:
    """The text with every separator removed, for substring lists: "裸 体" and "裸.体" read "裸体"."""
    return _NOT_WORD.sub("", text)


_KEPT = re.compile(r"[^\W_]+")


def _squeezed_places(text: str) -> list[int]:
    """Where in `text` each character of `_squeezed(text)` is."""
    places: list[int] = []
    for run in _KEPT.finditer(text):
        places.extend(range(run.start(), run.end()))
    return places


class _Matcher:
    """Finds list terms in a sequence of units: words (whole-word lists) or characters (substring lists).

    Terms are kept as a table of joined keys and the set of their prefixes, so a scan walks forward from each place
    only while what it has read so far begins some term: most places are ruled out by one set lookup.
    """

    def __init__(self, joiner: str, plural_s: bool) -> None:
        self.joiner = joiner
        self.plural_s = plural_s
        self.blocked: dict[str, tuple[str, str]] = {}  # key -> (category, source); a Refusal is made on a hit
        self.rule_keys: set[str] = set()  # the terms of context rules' parts: a hit is not a refusal by itself
        self.known: set[str] = set()  # blocked and rule keys, what a scan looks for
        self.allowed: set[str] = set()
        self.prefixes: set[str] = set()  # every key and every key's leading units, joined
        self.first_units: set[str] = set()
        self.starts: set[str] = set()
        self.first_chars: re.Pattern[str] | None = None  # a substring matcher's first units, as one class

    def add(self, units: Iterable[str], category: str, source: str, rule: bool = False) -> None:
        units = tuple(units)
        if not units:
            return
        key = self.joiner.join(units)
        if category == ALLOW_SECTION:
            self.allowed.add(key)
        elif rule:
            self.rule_keys.add(key)
        elif key not in self.blocked:
            self.blocked[key] = (category, source)
        self.first_units.add(units[0])
        self.prefixes.add(key)

    def ready(self) -> None:
        """Adds every key's leading units to `prefixes`; called once, after the last `add`."""
        prefixes = set(self.prefixes)
        joiner = self.joiner
        for key in self.prefixes:
            if not joiner:
                prefixes.update(key[:length] for length in range(1, len(key)))
            elif joiner in key:  # words never hold the joiner, so each one in a key ends a prefix
                prefixes.update(accumulate(key.split(joiner), lambda head, word: head + joiner + word))
        self.prefixes = prefixes
        # Where a term may start: a first unit, or with a plural "s" one ("cocks" for "cock ...").
        self.starts = self.first_units | ({unit + "s" for unit in self.first_units} if self.plural_s else set())
        self.known = set(self.blocked) | self.rule_keys
        if not self.joiner and self.first_units:
            self.first_chars = re.compile("[" + "".join(re.escape(unit) for unit in sorted(self.first_units)) + "]")

    def __bool__(self) -> bool:
        return bool(self.blocked or self.rule_keys)

    def scan(self, units: tuple[str, ...] | str) -> list[tuple[int, int, str]]:
        """Every blocked or rule term in `units` that no allowed term overlaps: (start, end, key), by start, longest
        first at one start ("sexy girl" is logged as minors, not sexual)."""
        hits: list[tuple[int, int, str]] = []
        allowed_spans: list[tuple[int, int]] = []
        count = len(units)
        firsts = self.first_units
        prefixes = self.prefixes
        blocked = self.known
        allowed = self.allowed
        plural_s = self.plural_s
        joiner = self.joiner
        if isinstance(units, str) and self.first_chars is not None:
            candidates = [found.start() for found in self.first_chars.finditer(units)]
        else:
            starts = self.starts
            candidates = [at for at, unit in enumerate(units) if unit in starts]
        for start in candidates:
            first = units[start]
            if first not in firsts and not (plural_s and first[:-1] in firsts):
                continue
            here: list[tuple[int, int, str]] = []
            key = ""
            for end in range(start + 1, count + 1):
                key = key + joiner + units[end - 1] if end > start + 1 else units[start]
                found = key if key in blocked else None
                single = key[:-1] if plural_s and len(key) > 3 and key.endswith("s") else None
                if found is None and single is not None and single in blocked:
                    found = single
                if found is not None:
                    here.append((start, end, found))
                if allowed and (key in allowed or (single is not None and single in allowed)):
                    allowed_spans.append((start, end))
                if key not in prefixes:
                    break
            hits.extend(reversed(here))
        if not allowed_spans:
            return hits
        # An allowed word overlapping the hit means the hit straddles two ordinary words ("角色|情绪"), or lies
        # inside an ordinary phrase ("oilseed rape"). One inside the hit does not lift it: 黄色 passes, 黄色网站 not.
        return [
            hit
            for hit in hits
            if not any(
                a_start < hit[1]
                and hit[0] < a_end
                and not (hit[0] <= a_start and a_end <= hit[1] and a_end - a_start < hit[1] - hit[0])
                for a_start, a_end in allowed_spans
            )
        ]

    def refusal(self, key: str) -> Refusal:
        category, source = self.blocked[key]
        return Refusal(category=category, term=key, source=source)

    def first_blocked(self, hits: list[tuple[int, int, str]]) -> Refusal | None:
        """The refusal for the first of a scan's hits that is a blocked term, not only a rule's part."""
        for _, _, key in hits:
            if key in self.blocked:
                return self.refusal(key)
        return None


def _expand(text: str) -> list[str]:
    """`a {b|c} d` -> `a b d`, `a c d`; braces nest, `{|s}` is an optional ending; a `|` outside braces too."""

    def alternatives(at: int, depth: int) -> tuple[list[str], int]:
        found: list[str] = []
        current = [""]
        while at < len(text):
            char = text[at]
            at += 1
            if char == "{":
                inner, at = alternatives(at, depth + 1)
                current = [prefix + option for prefix in current for option in inner]
                if len(current) > _MAX_EXPANSIONS:
                    raise ValueError(f"{text!r} expands to more than {_MAX_EXPANSIONS} terms")
            elif char == "|":
                found.extend(current)
                current = [""]
            elif char == "}":
                if depth == 0:
                    raise ValueError(f"unbalanced '}}' in {text!r}")
                return found + current, at
            else:
                current = [prefix + char for prefix in current]
        if depth:
            raise ValueError(f"unbalanced '{{' in {text!r}")
        return found + current, at

    options = [" ".join(option.split()) for option in alternatives(0, 0)[0]]
    return list(dict.fromkeys(option for option in options if option))


def load_list_file(path: Path) -> ListFile:
    """Parse one list file.

    Format (UTF-8): one term or phrase per line; blank lines and lines starting with `#` are skipped; a line
    `[category]` starts a section (terms before any section are "unsorted"); the `[allow]` section lists
    exceptions. How the file matches comes from its name: the language code before the first `.`, `-` or `_`
    (`zh.txt`, `zh-hant.txt`, `ja_extra.txt`) is looked up in SUBSTRING_LANGUAGES. A line `#!match: substring` or
    `#!match: word` anywhere in the file overrides that.

    Within a line, `{a|b}` gives alternatives (`naked {woman|women}`, `slit{|s|ting}`), and `$name` stands for a
    set defined earlier in the file by a line `$name = a|b|c`. A line with ` + ` between parts is a context rule:
    it refuses a sentence in which every part occurs (`blood + pool of|dripping`). One word with a `*` at its end
    (`fuck*`) or at both ends (`*fuck*`) matches as the start of, or anywhere inside, a longer word (the word
    itself is listed on its own line as usual).
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 ({error})") from error
    language = re.split(r"[._-]", path.name, maxsplit=1)[0].lower()
    substring = language in SUBSTRING_LANGUAGES
    terms: dict[str, list[str]] = {}
    rules: dict[str, list[tuple[tuple[str, ...], ...]]] = {}
    sets: dict[str, str] = {}
    category = UNSORTED_CATEGORY

    def resolve(text: str, number: int) -> str:
        def replace(reference: re.Match[str]) -> str:
            name = reference.group(1)
            if name not in sets:
                raise ValueError(f"{path}:{number}: ${name} is used before a line '${name} = ...' defines it")
            return "{" + sets[name] + "}"

        return _SET_REFERENCE.sub(replace, text)

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        directive = _MATCH_DIRECTIVE.match(line)
        if directive:
            mode = directive.group(1).lower()
            if mode not in ("substring", "word"):
                raise ValueError(f"{path}:{number}: #!match must be 'substring' or 'word', not {mode!r}")
            substring = mode == "substring"
            continue
        if not line or line.startswith("#"):
            continue
        section = _SECTION.match(line)
        if section:
            category = section.group(1).lower()
            continue
        definition = _SET_DEFINITION.match(line)
        try:
            if definition:
                sets[definition.group(1)] = resolve(definition.group(2).strip(), number)
                _expand(sets[definition.group(1)])  # a bad set fails on its own line
            elif _RULE_SPLIT.search(line):
                if category == ALLOW_SECTION:
                    raise ValueError("a context rule cannot be an [allow] entry")
                parts = tuple(tuple(_expand(resolve(part.strip(), number))) for part in _RULE_SPLIT.split(line))
                if len(parts) < 2 or not all(parts):
                    raise ValueError("a context rule needs two or more parts, none empty")
                rules.setdefault(category, []).append(parts)
            else:
                terms.setdefault(category, []).extend(_expand(resolve(line, number)))
        except ValueError as error:
            if str(error).startswith(str(path)):
                raise
            raise ValueError(f"{path}:{number}: {error}") from error
    return ListFile(path=path, substring=substring, terms=terms, rules=rules)


@dataclass(frozen=True)
class _Rule:
    category: str
    parts: tuple[frozenset[str], ...]  # each part: the matcher keys of its alternatives
    source: str


class PromptFilter:
    """Checks user text against word and phrase lists; built once at start-up, then shared (it is read-only).

    `off` names categories (list sections) to leave out, e.g. {"profanity"}; naming one that no list has is an
    error, so a typo is not taken for a category switched off.
    """

    def __init__(self, lists: Iterable[ListFile], off: Iterable[str] = ()) -> None:
        self._words = _Matcher(" ", plural_s=True)
        self._substrings = _Matcher("", plural_s=False)
        # Context rules: the terms of every rule part, each found anywhere in a sentence, then the rules checked.
        self._rules: list[_Rule] = []
        self._symbols: dict[str, Refusal] = {}  # terms of no letters or digits (🖕): found as they are
        # `fuck*` and `*fuck*` terms: stem -> (refusal, anywhere in the word); one pattern finds them all (see check)
        self._word_parts: dict[str, tuple[Refusal, bool]] = {}
        self._word_part_pattern: re.Pattern[str] | None = None
        self.sources: list[Path] = []
        self.off = frozenset(category.strip().lower() for category in off if category.strip())
        lists = list(lists)
        known = {category for list_file in lists for category in (*list_file.terms, *list_file.rules)}
        unknown = self.off - known - {ALLOW_SECTION}
        if unknown or ALLOW_SECTION in self.off:
            raise ValueError(
                f"blocklist categories to switch off are not in the lists: {sorted(unknown or {ALLOW_SECTION})} "
                f"(the categories are {sorted(known - {ALLOW_SECTION})})"
            )
        self.categories = frozenset(known - {ALLOW_SECTION} - self.off)
        for list_file in lists:
            self.sources.append(list_file.path)
            name = list_file.path.name
            for category, terms in list_file.terms.items():
                if category in self.off:
                    continue
                for term in terms:
                    if "*" in term and list_file.substring and not _ASCII_LETTER.search(normalise(term)):
                        term = term.strip("*")  # a substring term matches inside longer words already
                    if "*" in term:
                        self._add_word_part(term, category, name, list_file.path)
                        continue
                    matcher, units = self._units(term, list_file.substring, self._words, self._substrings)
                    if not units:
                        if category != ALLOW_SECTION:
                            key = normalise(term).strip()
                            self._symbols.setdefault(key, Refusal(category=category, term=key, source=name))
                        continue
                    matcher.add(units, category, name)  # an [allow] exception holds for the rules' terms too
            for category, rules in list_file.rules.items():
                if category in self.off:
                    continue
                for parts in rules:
                    keys = []
                    for alternatives in parts:
                        part = set()
                        for term in alternatives:
                            matcher, units = self._units(term, list_file.substring, self._words, self._substrings)
                            matcher.add(units, category, name, rule=True)
                            part.add(matcher.joiner.join(units))
                        keys.append(frozenset(part))
                    self._rules.append(_Rule(category=category, parts=tuple(keys), source=name))
        for matcher in (self._words, self._substrings):
            matcher.ready()
        if self._word_parts:
            # Over a reading's words joined by spaces: the whole word holding a stem, so [allow] can be asked about it.
            parts = self._word_parts.items()
            inside = sorted((re.escape(stem) for stem, (_, anywhere) in parts if anywhere), key=len, reverse=True)
            start = sorted((re.escape(stem) for stem, (_, anywhere) in parts if not anywhere), key=len, reverse=True)
            alternatives = []
            if inside:
                alternatives.append(r"(?<!\S)\S*?(?P<inside>" + "|".join(inside) + r")\S*")
            if start:
                alternatives.append(r"(?<!\S)(?P<start>" + "|".join(start) + r")\S*")
            self._word_part_pattern = re.compile("|".join(alternatives))

    def _add_word_part(self, term: str, category: str, source: str, path: Path) -> None:
        found = _WORD_PART.fullmatch(normalise(term).strip())
        if found is None:
            raise ValueError(
                f"{path}: {term!r}: a `*` term is one word of three letters or more with `*` at its end (`fuck*`) "
                "or at both ends (`*fuck*`)"
            )
        if category == ALLOW_SECTION:
            raise ValueError(f"{path}: {term!r}: an [allow] entry is a whole word or phrase, not a `*` term")
        stem, anywhere = found.group(2), bool(found.group(1))
        refusal = Refusal(category=category, term=normalise(term).strip(), source=source)
        previous = self._word_parts.get(stem)
        if previous is None or (anywhere and not previous[1]):
            self._word_parts[stem] = (refusal, anywhere)

    @staticmethod
    def _units(term: str, substring: bool, words: _Matcher, substrings: _Matcher) -> tuple[_Matcher, list[str] | str]:
        """Where a term goes and what it is made of. A term with a Latin letter matches as words in every list:
        a substring list's "tm" must not refuse "atmosphere"."""
        text = normalise(term)
        if substring and not _ASCII_LETTER.search(text):
            return substrings, _squeezed(text)
        if text.isascii() and text.replace(" ", "").isalpha():
            return words, text.split()  # what _PLAIN_WORD gives for plain words, found faster
        return words, _PLAIN_WORD.findall(text)

    @classmethod
    def from_dirs(cls, directories: Iterable[str | Path | None], off: Iterable[str] = ()) -> PromptFilter:
        """A filter from every `*.txt` in the given directories, in order; None or "" entries are skipped.

        A directory that does not exist is an error: a mistyped operator path must not quietly filter less.
        """
        files: list[ListFile] = []
        for directory in directories:
            if directory is None or str(directory) == "":
                continue
            directory = Path(directory)
            if not directory.is_dir():
                raise FileNotFoundError(f"blocklist directory {directory} does not exist")
            files.extend(load_list_file(path) for path in sorted(directory.glob("*.txt")))
        return cls(files, off=off)

    @classmethod
    def default(cls, extra_dir: str | Path | None = None, off: Iterable[str] = ()) -> PromptFilter:
        """The repository's lists, plus the operator's directory when one is given, less the categories `off`."""
        return cls.from_dirs([DEFAULT_BLOCKLIST_DIR, extra_dir], off=off)

    def check(self, text: str) -> Refusal | None:
        """Why `text` is refused, or None when it may be drawn."""
        if not text:
            return None
        normalised = normalise(text)
        for symbol, refusal in self._symbols.items():
            if symbol in normalised:
                return refusal
        # One scan of each reading finds the blocked terms and the rules' terms together.
        readings = _word_readings(normalised) if self._words or self._word_part_pattern else {}
        word_hits = []
        for reading, starts in readings.items():
            hits = self._words.scan(reading)
            refusal = self._words.first_blocked(hits) or self._word_part_refusal(reading)
            if refusal is not None:
                return refusal
            word_hits.append((starts, hits))
        squeezed = _squeezed(normalised) if self._substrings else ""
        substring_hits = self._substrings.scan(squeezed) if squeezed else []
        refusal = self._substrings.first_blocked(substring_hits)
        if refusal is not None:
            return refusal
        if self._rules:
            return self._check_rules(normalised, word_hits, substring_hits)
        return None

    def _word_part_refusal(self, reading: tuple[str, ...]) -> Refusal | None:
        """The first `fuck*` / `*fuck*` term inside a word of `reading` that [allow] does not name as a whole word."""
        if self._word_part_pattern is None:
            return None
        allowed = self._words.allowed
        for found in self._word_part_pattern.finditer(" ".join(reading)):
            word = found.group()
            stems = found.groupdict()
            stem = stems.get("inside") or stems["start"]
            # The stem itself is a plain term's business, with its phrases and [allow] ("faggots of wood").
            if word in (stem, stem + "s") or word in allowed or (word.endswith("s") and word[:-1] in allowed):
                continue
            return self._word_parts[stem][0]
        return None

    def _check_rules(
        self,
        normalised: str,
        word_hits: list[tuple[tuple[int, ...], list[tuple[int, int, str]]]],
        substring_hits: list[tuple[int, int, str]],
    ) -> Refusal | None:
        """The first context rule whose parts all occur in one sentence. The rules' terms were found once in the
        whole text; each hit is placed in its sentence by where it starts, and a hit across two sentences is none."""
        rule_keys_words = self._words.rule_keys
        rule_keys_substrings = self._substrings.rule_keys
        word_hits = [(starts, [h for h in hits if h[2] in rule_keys_words]) for starts, hits in word_hits]
        substring_hits = [hit for hit in substring_hits if hit[2] in rule_keys_substrings]
        if sum(len(hits) for _, hits in word_hits) + len(substring_hits) < 2:
            return None  # every rule has two parts or more
        ends = [separator.start() for separator in _SENTENCE_END.finditer(normalised)]
        found: dict[int, set[str]] = {}

        def place(first: int, last: int, key: str) -> None:
            sentence = bisect_right(ends, first)
            if sentence == bisect_right(ends, last):
                found.setdefault(sentence, set()).add(key)

        for starts, hits in word_hits:
            for start, end, key in hits:
                place(starts[start], starts[end - 1], key)
        if substring_hits:
            places = _squeezed_places(normalised)
            for start, end, key in substring_hits:
                place(places[start], places[end - 1], key)
        for sentence in sorted(found):
            keys = found[sentence]
            if len(keys) < 2:
                continue
            for rule in self._rules:
                hits = [part & keys for part in rule.parts]
                if all(hits):
                    term = _RULE_JOIN.join(min(hit) for hit in hits)  # what matched, for the log: "blood + pool of"
                    return Refusal(category=rule.category, term=term, source=rule.source)
        return None

    def first_refusal(self, fields: Iterable[tuple[str, str | None]]) -> tuple[str, Refusal] | None:
        """The first (field name, refusal) among `(field, text)` pairs, e.g. `("pages[2].text", ...)`; or None."""
        for field_name, text in fields:
            if text:
                refusal = self.check(text)
                if refusal is not None:
                    return field_name, refusal
        return None


def _phrases(prompt: str) -> list[str]:
    return [phrase.strip() for phrase in prompt.split(",") if phrase.strip()]


def with_safe_negative(negative_prompt: str, safe_negative: str = DEFAULT_SAFE_NEGATIVE_PROMPT) -> str:
    """The page's negative prompt with the child-safe one added; an empty `safe_negative` turns this off.

    The safe phrases go first: the text encoders read only 77 tokens, and a long user negative prompt would
    otherwise push them out of the window. Phrases the user already wrote are not repeated.
    """
    safe = _phrases(safe_negative)
    if not safe:
        return negative_prompt
    present = {" ".join(phrase.casefold().split()) for phrase in _phrases(negative_prompt)}
    missing = [phrase for phrase in dict.fromkeys(safe) if " ".join(phrase.casefold().split()) not in present]
    if not missing:
        return negative_prompt
    if not negative_prompt.strip():
        return ", ".join(missing)
    return ", ".join(missing) + ", " + negative_prompt.strip()
