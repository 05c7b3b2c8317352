"""Turning a token stream into text: UTF-8-safe incremental decoding and stop strings.

`TextStream.feed(piece_bytes)` returns the text that is safe to show now: never half of a
multi-byte character, and never a prefix of a stop string that later tokens might complete
(those bytes are held back until they can no longer be part of a stop).
"""
from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str] | None = None):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stops or []) if s]
        self._held = ""  # text that may be the start of a stop string
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return newly visible text (stop strings excluded)."""
        if self.stopped:
            return ""
        return self._scan(self._utf8.decode(data))

    def finish(self) -> str:
        """End of generation: flush whatever was held back."""
        if self.stopped:
            return ""
        text = self._scan(self._utf8.decode(b"", final=True))
        if self.stopped:
            return text
        text, self._held = text + self._held, ""
        return text

    def _scan(self, new: str) -> str:
        buf = self._held + new
        if not self._stops:
            self._held = ""
            return buf
        cut = -1
        for s in self._stops:
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf
