"""`stop` and `max_tokens` for generated text, applied at the web edge whatever the model does with them."""

from __future__ import annotations


class TextLimits:
    """Feeds chunks of text through and says what may be sent and when the generation must end.

    A stop string may span chunks, so text that could be the start of one is held back until it is clear;
    the text sent never includes a stop string, and the streamed pieces concatenate to the whole answer.
    """

    def __init__(self, stops: list[str], max_tokens: int | None) -> None:
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._max_tokens = max_tokens
        self._pending = ""
        self.tokens = 0
        self.finish_reason: str | None = None  # "stop" or "length" once ended here

    def feed(self, text: str) -> str:
        """The text that may be sent now; check `finish_reason` after each call."""
        self.tokens += 1
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            sent, self._pending = self._pending[:cut], ""
            return sent
        if self._max_tokens is not None and self.tokens >= self._max_tokens:
            self.finish_reason = "length"
            return self.flush()
        keep = min(self._hold, len(self._pending))
        sent = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(sent) :]
        return sent

    def flush(self) -> str:
        """What is held back, once the generation has ended."""
        sent, self._pending = self._pending, ""
        return sent
