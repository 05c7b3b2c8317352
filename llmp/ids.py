"""Identifiers: a prefix plus random base62, as the spec's `key_`, `cmpl_`, `file_` ..."""
from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_base62(n: int = 24) -> str:
    """n uniform base62 characters from one call to the CSPRNG (cheap enough for hot paths)."""
    v = secrets.randbelow(62 ** n)
    out = []
    for _ in range(n):
        v, r = divmod(v, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def new_id(prefix: str, n: int = 24) -> str:
    """`new_id("file")` -> `file_3kT...`."""
    return f"{prefix}_{random_base62(n)}"
