"""Token ids in, text out, as it is generated: incremental decoding with stop strings.

Two things keep the streamed text honest. A token can end in the middle of a UTF-8 character (byte-level BPE
splits emoji and accents), which decodes to U+FFFD until the next token completes it, so such a tail is held
back. And text that could still become a stop string ("\\n\\nUs" of "\\n\\nUser:") is held back until it either
completes the stop string (then neither it nor anything after it is sent) or stops matching.
"""

from __future__ import annotations

# Decoding the whole generation each step costs O(n) per token; re-decoding only a window of recent tokens
# would be cheaper, but at the few hundred tokens a request may generate it is microseconds (a fast tokenizer
# decodes ~10 M tokens/s), and decoding everything avoids merge artefacts at the window's edge.


class TextStream:
    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # the decoded text so far (after a stop string: cut before it)
        self.sent = 0  # characters of self.text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now safe to send (maybe empty)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.stop:
            # Search only where a new match can start: a stop string may begin inside text already held back.
            start = max(0, self.sent - max(len(s) for s in self.stop))
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._take(len(self.text))
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 character
            end -= 1
        end -= self._stop_prefix_len(self.text[self.sent:end])
        return self._take(end)

    def finish(self) -> str:
        """The generation ended: everything not yet sent."""
        return self._take(len(self.text))

    def _stop_prefix_len(self, pending: str) -> int:
        """Length of the longest tail of `pending` that is the start of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(pending)), best, -1):
                if pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:end], end
        return delta
