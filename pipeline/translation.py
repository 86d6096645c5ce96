"""Chinese prompts into the English SDXL's text encoders read: MarianMT (opus-mt-zh-en), batched, cached, greedy.

Which text is translated (`chinese_spans`): a text with no CJK Unified Ideograph (U+3400-U+4DBF, U+4E00-U+9FFF,
U+F900-U+FAFF) is left exactly as written and costs nothing. A text with one is cut at its runs of Latin-script
words (ASCII letters, with the digits, spaces and ASCII punctuation between such words); each remaining piece that
holds an ideograph is translated, every other piece is kept verbatim, and the pieces are joined with single spaces.
So "a 小狐狸 with a kite" sends only "小狐狸" to the model, and the English around it reaches the encoders untouched;
"两个角色在花园中交谈，左边是角色1，右边是角色2" has no Latin word and is translated whole. Japanese kanji are
ideographs too and are sent to the (Chinese) model; no language-detection model is used.

Deterministic: greedy decoding (one beam, no sampling), so the same text always gives the same English, and the
same request the same page. Each distinct piece is translated once while it stays in a bounded LRU cache, and the
pieces of one call (every prompt and negative prompt of a batch) that are not cached go to the model in one batch.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

import torch

log = logging.getLogger(__name__)

IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = r"[A-Za-z0-9][A-Za-z0-9'\-]*"
# A run of Latin-script words: starts with a letter; digits and ASCII punctuation between its words stay inside it.
LATIN_RUN = re.compile(rf"[A-Za-z][A-Za-z0-9'\-]*(?:[ \t,.;:!?()\"/&]+{_WORD})*")
MAX_SOURCE_TOKENS = 512  # opus-mt-zh-en's max_position_embeddings
MAX_NEW_TOKENS = 256  # far more English than a prompt needs; bounds a degenerate (non-stopping) decode
# Each call also stops at twice its longest source plus 16 tokens: English runs about as many pieces as Chinese.


def has_chinese(text: str) -> bool:
    return IDEOGRAPH.search(text) is not None


def chinese_spans(text: str) -> list[tuple[str, bool]]:
    """`text` as (piece, translate?) in order: Latin runs and pieces without an ideograph are kept as they are."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in LATIN_RUN.finditer(text):
        if match.start() > position:
            pieces.append((text[position : match.start()], False))
        pieces.append((match.group(0), False))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], False))
    return [(piece, has_chinese(piece)) for piece, _ in pieces]


class PromptTranslator:
    """MarianMT Chinese to English over whole prompts (see the module's rule); thread-safe counters for tests."""

    def __init__(self, model, tokenizer, cache_size: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._max_length = model.generation_config.max_length or MAX_NEW_TOKENS
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # model calls (one per `translate` call that had anything uncached)
        self.hits = 0
        self.misses = 0

    def translate(self, texts: list[str]) -> list[str]:
        """The English the text encoders read for each text, in order: texts without Chinese come back unchanged
        (and cost nothing); every uncached Chinese piece of all `texts` goes to the model in one batch."""
        spans = [chinese_spans(text) if has_chinese(text) else [] for text in texts]
        wanted = list(dict.fromkeys(piece.strip() for text in spans for piece, chinese in text if chinese))
        english = self._lookup(wanted)
        out = []
        for text, pieces in zip(texts, spans):
            if not pieces:
                out.append(text)
                continue
            parts = [english[piece.strip()] if chinese else piece.strip() for piece, chinese in pieces]
            out.append(" ".join(part for part in parts if part))
        return out

    def _lookup(self, pieces: list[str]) -> dict[str, str]:
        if not pieces:
            return {}
        with self._lock:
            found = {piece: self._cache[piece] for piece in pieces if piece in self._cache}
            for piece in found:
                self._cache.move_to_end(piece)
            missing = [piece for piece in pieces if piece not in found]
            self.hits += len(found)
            self.misses += len(missing)
        if missing:
            fresh = dict(zip(missing, self.generate(missing)))
            found.update(fresh)
            with self._lock:
                for piece, text in fresh.items():
                    self._cache[piece] = text
                    self._cache.move_to_end(piece)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return found

    @torch.inference_mode()
    def generate(self, pieces: list[str]) -> list[str]:
        """One batched, greedy MarianMT call, uncached."""
        with self._lock:
            self.calls += 1
        batch = self.tokenizer(
            pieces, return_tensors="pt", padding=True, truncation=True, max_length=MAX_SOURCE_TOKENS
        ).to(self.model.device)
        longest = batch["input_ids"].shape[1]
        new_tokens = min(MAX_NEW_TOKENS, 2 * longest + 16, self._max_length - 1)
        # max_length (not max_new_tokens), the field the model's generation config sets: decoder start + new tokens.
        output = self.model.generate(**batch, num_beams=1, do_sample=False, max_length=new_tokens + 1)
        decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        # A Chinese piece must never come back as Chinese (it would be translated again when sent back as English).
        return [" ".join(IDEOGRAPH.sub(" ", text).split()) for text in decoded]


def load_translator(folder: Path, device: str, dtype, cache_size: int) -> PromptTranslator:
    """opus-mt-zh-en (or its tiny or full-size stand-in, written as safetensors) from its hub layout.

    The pinned hub revision has only a pickled `pytorch_model.bin`: it is read with `weights_only=True` (tensors
    only, no arbitrary objects), as the MiDaS checkpoint is (docs/SECURITY.md). Safetensors are used when present."""
    from transformers import MarianMTModel, MarianTokenizer

    folder = Path(folder)
    tokenizer = MarianTokenizer.from_pretrained(folder)
    safetensors = (folder / "model.safetensors").is_file()
    model = MarianMTModel.from_pretrained(folder, use_safetensors=safetensors, weights_only=True, dtype=dtype).to(
        device
    )
    log.info("translator loaded from %s (%d parameters)", folder, sum(p.numel() for p in model.parameters()))
    return PromptTranslator(model, tokenizer, cache_size)
