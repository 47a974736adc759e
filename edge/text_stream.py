"""The answer's text as the user sees it: detokenized token by token, cut at the first stop string.

``TextStream.add`` takes each shown token and returns the text that is safe to show now: pieces never
end inside a UTF-8 character, and an ending that could still grow into a stop string is held back until
it cannot. Once a stop string appears the text ends before it (``stopped``). Without a local tokenizer
(cloud mode with no package) the cloud's own token texts are used, one token behind, so the cloud's
end-of-turn token, which only ``done`` identifies, is never shown.
"""

from __future__ import annotations

from pdlink.common.tokenizer import StreamingDetokenizer, Tokenizer


class TextStream:
    """Text of one answer (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer | None, stop_strings: tuple[str, ...] = ()):
        self._detok = StreamingDetokenizer(tokenizer) if tokenizer is not None else None
        self._stops = stop_strings
        self._held_piece: str | None = None  # no tokenizer: the last cloud piece, shown once the next arrives
        self.text = ""  # everything so far (cut at a stop string)
        self._emitted = 0
        self.stopped = False

    def add(self, token_id: int, cloud_text: str = "") -> str:
        """One more shown token (``cloud_text``: its text from the cloud); returns the text to show now."""
        if self.stopped:
            return ""
        if self._detok is not None:
            piece = self._detok.add(token_id)
        else:
            piece, self._held_piece = self._held_piece or "", cloud_text
        return self._extend(piece)

    def finish(self, drop_held: bool = False) -> str:
        """The rest of the text at the end of the answer (``drop_held``: the cloud's last piece was its
        end-of-turn token)."""
        if self.stopped:
            return ""
        if self._detok is not None:
            piece = self._detok.flush()
        else:
            piece, self._held_piece = ("" if drop_held else self._held_piece or ""), None
        self._extend(piece)
        out, self._emitted = self.text[self._emitted:], len(self.text)
        return out

    def _extend(self, piece: str) -> str:
        self.text += piece
        hit = min((i for i in (self.text.find(s) for s in self._stops) if i >= 0), default=None)
        if hit is not None:
            self.text, self.stopped = self.text[:hit], True
            safe = len(self.text)
        else:
            safe = len(self.text) - _held_back(self.text, self._stops)
        out, self._emitted = self.text[self._emitted:safe], max(self._emitted, safe)
        return out


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
