"""The front's content-safety layer: user-written text is checked before any model work, and every page's negative
prompt carries the child-safe one. (The picture check runs on the model side: pipeline/safety.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.responses import JSONResponse

from . import errors
from .metrics import REFUSALS
from .prompt_filter import REFUSAL_MESSAGE, PromptFilter
from .settings import ServingSettings

log = logging.getLogger("picturebook.safety")


class PromptGate:
    def __init__(self, settings: ServingSettings):
        off = settings.blocklist_off
        self.filter = PromptFilter.default(settings.blocklist_dir, off=off) if settings.prompt_filter else None
        if self.filter is None:
            log.warning("the prompt filter is OFF (PICTUREBOOK_PROMPT_FILTER=false): prompts are not checked")
        elif off:
            log.warning("blocklist categories switched OFF (PICTUREBOOK_BLOCKLIST_CATEGORIES_OFF): %s", ", ".join(off))

    def refusal(self, fields: Iterable[tuple[str, str | None]]) -> JSONResponse | None:
        """A 422 naming the first field (`prompt`, `pages[2].text`) whose text is refused; None when all pass."""
        if self.filter is None:
            return None
        found = self.filter.first_refusal(fields)
        if found is None:
            return None
        field, refusal = found
        log.warning("content refused in %s: %s", field, refusal)  # the category and term, never the whole text
        REFUSALS.labels(kind="prompt_refused").inc()
        return errors.content_refused(field, REFUSAL_MESSAGE)
