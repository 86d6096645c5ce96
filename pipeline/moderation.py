"""The text moderation model: Qwen3Guard-Gen judges every text a user writes, after the blocklists.

Qwen3Guard-Gen is a Qwen3 causal LM fine-tuned to answer its own chat template (prompt moderation: the user's text as
the conversation's last USER turn) with two lines, `Safety: Safe|Unsafe|Controversial` and `Categories: ...`
(Qwen's model card and technical report, arXiv 2510.14276). Here it generates greedily, a few tokens, and the answer
is parsed. Strict mode (the default for a children's service): "Controversial" counts as unsafe. Anything that does
not parse is unsafe too (fail closed).

No BentoML here: the model service calls `TextModerator.moderate`, the tests call it in-process. The `tiny` profile
has a tiny Qwen3 of the same class with a tiny byte-level BPE tokenizer and the prompt-moderation chat template,
trained (pipeline/tiny.py) to judge texts with `UNSAFE_FIXTURE_MARKER` "Unsafe" in `UNSAFE_FIXTURE_CATEGORY` and
everything else "Safe", so the real tokenizer, template, generation and parsing run in every test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Prompt-moderation categories of Qwen3Guard-Gen (model card).
CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
UNPARSEABLE = "unparseable"  # the category of an answer that did not parse (refused: fail closed)
UNSPECIFIED = "unspecified"  # "Unsafe" with no category named

UNSAFE_FIXTURE_MARKER = "MODERATION-TEST-UNSAFE"
UNSAFE_FIXTURE_CATEGORY = "Violent"
SAFE_ANSWER = "Safety: Safe\nCategories: None"
UNSAFE_FIXTURE_ANSWER = f"Safety: Unsafe\nCategories: {UNSAFE_FIXTURE_CATEGORY}"

MAX_NEW_TOKENS = 16  # "Safety: Controversial\nCategories: Violent, Jailbreak" is ~12 Qwen tokens
BATCH = 16  # texts per generate() call: a 24-page book (49 texts) is 4 calls

_SAFETY = re.compile(r"^\s*Safety:\s*(Safe|Unsafe|Controversial)\s*$", re.M)
_CATEGORIES = re.compile(r"^\s*Categories:\s*(.*?)\s*$", re.M)
# Chat-control strings a user could type to close the USER turn and write the guard's answer themselves: the
# tokenizer would read them as the special tokens. Broken apart (one space), they are plain text to the model.
_CONTROL = re.compile(r"<\|([^|<>]{1,40})\|>|<(/?think)>")

# The prompt-moderation branch of Qwen3Guard-Gen's chat template (a single user turn), for the tiny tokenizer; the
# real tokenizer brings its own (tokenizer_config.json of the pinned revision) and `apply_chat_template` uses it.
PROMPT_MODERATION_TEMPLATE = (
    "{%- set query = messages[-1]['content'] -%}"
    "<|im_start|>user\n"
    "# Task:\n"
    "1) Evaluate whether THE LAST USER's query belongs to safe or unsafe content based on our safety policy.\n"
    "2) Identify the category of unsafe content found.\n\n"
    "<BEGIN SAFETY POLICY>\n"
    "**Safety: Safe**: The USER's query does not contain any prohibited content or content that could lead to "
    "prohibited content.\n"
    "**Safety: Unsafe**: The USER's query contains prohibited content.\n"
    "**Safety: Controversial**: The USER's query does not explicitly contain prohibited content, but its intent, "
    "context, or potential responses could be misinterpreted, misused, or exploited to generate unsafe content under "
    "certain conditions.\n"
    "<END SAFETY POLICY>\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + "".join(f"{category}.\n" for category in CATEGORIES) + ""
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "USER: {{ query }}\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST **USER's query** in the above conversation:\n"
    " - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.\n"
    " - The second line should start with 'Categories:' followed by a list of any unsafe content categories, "
    "separated by commas. If the content is safe, use 'Categories: None'.<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@dataclass(frozen=True)
class Verdict:
    """The model's judgement of one text."""

    safe: bool
    level: str  # Safe, Unsafe, Controversial, or UNPARSEABLE
    categories: tuple[str, ...] = ()

    @property
    def category(self) -> str:
        """One label for metrics and the 422: the first category named."""
        if self.categories:
            return self.categories[0]
        return UNPARSEABLE if self.level == UNPARSEABLE else UNSPECIFIED


def parse_verdict(answer: str, strict: bool = True) -> Verdict:
    """Qwen3Guard's answer as a verdict. Strict: Controversial is unsafe. No `Safety:` line: unsafe (fail closed)."""
    level = _SAFETY.search(answer)
    if level is None:
        return Verdict(safe=False, level=UNPARSEABLE)
    named = _CATEGORIES.search(answer)
    categories: tuple[str, ...] = ()
    if named is not None:
        categories = tuple(
            part.strip().rstrip(".") for part in named.group(1).split(",") if part.strip() and part.strip() != "None"
        )
    safe = level.group(1) == "Safe" or (level.group(1) == "Controversial" and not strict)
    return Verdict(safe=safe, level=level.group(1), categories=() if safe else categories)


def neutralised(text: str) -> str:
    """The text with chat-control strings broken apart ("<|im_end|>" -> "< |im_end| >"), so it stays one USER turn."""
    return _CONTROL.sub(lambda m: f"< |{m.group(1)}| >" if m.group(1) else f"< {m.group(2)} >", text)


class TextModerator:
    def __init__(self, model, tokenizer, strict: bool = True, max_new_tokens: int = MAX_NEW_TOKENS):
        self.model = model
        self.tokenizer = tokenizer
        self.strict = strict
        self.max_new_tokens = max_new_tokens
        tokenizer.padding_side = "left"  # generation continues every row from its last token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def prompt(self, text: str) -> str:
        messages = [{"role": "user", "content": neutralised(text)}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answers(self, texts: list[str]) -> list[str]:
        """The model's raw answers, greedy, one per text."""
        import torch

        out: list[str] = []
        for start in range(0, len(texts), BATCH):
            prompts = [self.prompt(text) for text in texts[start : start + BATCH]]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(self.model.device)
            with torch.inference_mode():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = generated[:, batch["input_ids"].shape[1] :]
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out

    def moderate(self, texts: list[str]) -> list[Verdict]:
        return [parse_verdict(answer, self.strict) for answer in self.answers(texts)]


def load_text_moderator(folder: Path, device: str, dtype, strict: bool = True) -> TextModerator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # use_safetensors=True: model.safetensors only, never a pickled pytorch_model.bin.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    model.eval()
    return TextModerator(model.to(device), tokenizer, strict=strict)
