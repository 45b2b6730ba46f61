"""What a collector's answer to a batch says about the collector itself.

``accepts`` names the optional wire fields it stores (``core/schema.py: OPTIONAL_FIELDS``).
An older collector refuses fields it does not know, and its refusal would cost every job of
the batch, so the agent sends an optional field only while the latest answer names it: until
the first answer after a start, and from any answer without it (a rolling downgrade, a load
balancer's older collector), the agent stores what any collector accepts.
"""

from __future__ import annotations

import json

#: More names than any collector sends: the rest are ignored.
_MAX_NAMES = 64


def accepted_fields(body: bytes) -> frozenset[str]:
    """Return the optional wire fields an answer says its collector stores (empty: none, or
    an answer that cannot be read)."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return frozenset()
    names = answer.get("accepts") if isinstance(answer, dict) else None
    if not isinstance(names, list):
        return frozenset()
    return frozenset(n for n in names[:_MAX_NAMES] if isinstance(n, str))
