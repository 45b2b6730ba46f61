"""Text from outside (file names, peers, clients, the collector) made safe to log."""

from __future__ import annotations


def printable(text: str) -> str:
    """Return ``text`` safe to log and to put in messages: control characters and the
    surrogates that stand for non-UTF-8 bytes of file names (``os.listdir`` on a ``str``
    path) escaped, so that writing it never raises UnicodeEncodeError."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
