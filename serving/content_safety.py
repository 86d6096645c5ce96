"""The front's content-safety layer: user-written text is checked before any model work, and every page's negative
prompt carries the child-safe one. (The picture check runs on the model side: pipeline/safety.py.)

Two stages, in order: the blocklists (serving/prompt_filter.py, in this process, microseconds), then the moderation
model (pipeline/moderation.py, on the model service, one batched call for all of a request's texts). Either refuses
with the same 422 `content_refused` naming the first refused field; the model's refusal adds its `category`. Fail
closed: a moderation call that fails is a 503 with Retry-After, and nothing is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.responses import JSONResponse

from . import errors
from .metrics import REFUSALS, TEXT_REFUSALS
from .prompt_filter import REFUSAL_MESSAGE, PromptFilter
from .settings import ServingSettings

log = logging.getLogger("picturebook.safety")


class PromptGate:
    def __init__(self, settings: ServingSettings, moderation: bool = True):
        off = settings.blocklist_off
        self.filter = PromptFilter.default(settings.blocklist_dir, off=off) if settings.prompt_filter else None
        if self.filter is None:
            log.warning("the prompt filter is OFF (PICTUREBOOK_PROMPT_FILTER=false): prompts are not checked")
        elif off:
            log.warning("blocklist categories switched OFF (PICTUREBOOK_BLOCKLIST_CATEGORIES_OFF): %s", ", ".join(off))
        self.moderation = moderation
        if not moderation:
            log.warning("text moderation is OFF (PICTUREBOOK_MODERATION=false): texts pass the blocklists only")
        self.retry_after_s = settings.retry_after_s
        self.client = None  # the model service's client (serving/model_client.py), set by the front service

    def use_model(self, client) -> None:
        self.client = client

    async def refusal(self, fields: Iterable[tuple[str, str | None]]) -> JSONResponse | None:
        """A 422 naming the first field (`prompt`, `pages[2].text`) whose text is refused; None when all pass."""
        fields = list(fields)
        return self.listed(fields) or (await self.moderated(fields) if self.moderation else None)

    def listed(self, fields: list[tuple[str, str | None]]) -> JSONResponse | None:
        """Stage 1: the blocklists."""
        if self.filter is None:
            return None
        found = self.filter.first_refusal(fields)
        if found is None:
            return None
        field, refusal = found
        log.warning("content refused in %s: %s", field, refusal)  # the category and term, never the whole text
        REFUSALS.labels(kind="prompt_refused").inc()
        TEXT_REFUSALS.labels(stage="lists", category=refusal.category).inc()
        return errors.content_refused(field, REFUSAL_MESSAGE)

    async def moderated(self, fields: list[tuple[str, str | None]]) -> JSONResponse | None:
        """Stage 2: the moderation model, every text of the request in one call (a book's page 17 before page 1)."""
        written = [(field, text) for field, text in fields if text]
        texts = list(dict.fromkeys(text for _, text in written))
        if not texts:
            return None
        try:
            if self.client is None:
                raise RuntimeError("no model service to moderate with")
            verdicts = await self.client.calls.moderate(texts=texts)
            if len(verdicts) != len(texts):
                raise RuntimeError(f"{len(verdicts)} verdicts for {len(texts)} texts")
        except Exception as error:  # fail closed: nothing unjudged is drawn
            log.error("text moderation failed, refusing the request: %r", error)
            TEXT_REFUSALS.labels(stage="model", category="moderation_failed").inc()
            return errors.moderation_unavailable(self.retry_after_s)
        verdict_of = dict(zip(texts, verdicts, strict=True))
        for field, text in written:
            verdict = verdict_of[text]
            if not verdict.safe:
                log.warning("content refused in %s by the model: %s (%s)", field, verdict.category, verdict.level)
                REFUSALS.labels(kind="prompt_refused").inc()
                TEXT_REFUSALS.labels(stage="model", category=verdict.category).inc()
                return errors.content_refused(field, REFUSAL_MESSAGE, category=verdict.category)
        return None
