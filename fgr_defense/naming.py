"""The one seed rule and the one slug rule of deform-robust (standard library only, no ``torch``).

- :func:`derive_seed`: a deterministic 31-bit seed from any parts (the trainer's per-step
  seeds, the harness's per-cell seeds).
- :func:`slugify`: the one rule that turns a name into a folder or file name
  (:func:`file_slug`: the same, bounded in length, for any name).

Example:
    >>> derive_seed(0, "FlowPGD") == derive_seed(0, "FlowPGD")
    True
    >>> slugify("FGR+RS+AT-PGD lam=100")
    'fgr-rs-at-pgd-lam-100'
"""

from __future__ import annotations

import hashlib
import re
from typing import Union

__all__ = ["SEED_BITS", "derive_seed", "file_slug", "slugify"]

#: Seeds are ``0 <= seed < 2**SEED_BITS``: valid for ``torch``, ``numpy`` and ``random`` alike.
SEED_BITS = 31

Part = Union[int, str]


def derive_seed(*parts: Part) -> int:
    """A deterministic seed in ``[0, 2**31)`` from ints and strings.

    Convention:
        ``int(sha256("|".join(str(p) for p in parts)).hexdigest()[:8], 16) & 0x7FFFFFFF``:
        stable across processes, machines and Python versions (unlike ``hash()``). The parts
        are joined with ``"|"``, so ``derive_seed(0, "a|b") == derive_seed(0, "a", "b")``:
        use parts of a fixed layout (the harness: ``(base_seed, cell_key)``; the trainer:
        ``(seed, epoch, step, rank)``). ``True``/``False`` are refused (they would read as
        1/0 by accident).

    Args:
        *parts: at least one int or str.

    Returns:
        An int in ``[0, 2**31 - 1]``.

    Raises:
        TypeError: no parts, or a part that is not an int or str.

    Example:
        >>> derive_seed(3, 0, 1, 0)
        186839423
        >>> import hashlib
        >>> derive_seed(3, "x") == int(hashlib.sha256(b"3|x").hexdigest()[:8], 16) & 0x7FFFFFFF
        True
        >>> 0 <= derive_seed("any", -5) < 2**31
        True
        >>> derive_seed(1.5)
        Traceback (most recent call last):
        ...
        TypeError: parts: expected ints or strings, got float 1.5 at position 0
    """
    if not parts:
        raise TypeError("parts: expected at least one int or str, got none")
    for i, part in enumerate(parts):
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise TypeError(f"parts: expected ints or strings, got {type(part).__name__} {part!r} at position {i}")
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) & ((1 << SEED_BITS) - 1)


def slugify(text: str) -> str:
    """The folder/file name of ``text``: lowercase ``a-z``, ``0-9``, ``.`` and ``-`` only.

    Convention:
        Lowercase; every run of other characters (``+``, spaces, ``_``, ``/``, ``=``, ...)
        becomes one ``-``; leading and trailing ``-`` and ``.`` are dropped (so the result is
        never ``.``, ``..`` or a hidden name). Different names can share a slug
        (``"FGR+RS"`` and ``"fgr rs"``); keep the original name in the files' metadata.

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: nothing is left (no letter or digit).

    Example:
        >>> slugify("FGR+RS")
        'fgr-rs'
        >>> slugify("  IGR w=0.5 ")
        'igr-w-0.5'
        >>> slugify("../x")
        'x'
        >>> slugify("+++")
        Traceback (most recent call last):
        ...
        ValueError: text: expected a name with at least one letter or digit, got '+++'
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__} {text!r}")
    slug = re.sub(r"[^a-z0-9.-]+", "-", text.lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-.")
    if not re.search(r"[a-z0-9]", slug):
        raise ValueError(f"text: expected a name with at least one letter or digit, got {text!r}")
    return slug


def file_slug(text: str, max_len: int = 60) -> str:
    """:func:`slugify` bounded to ``max_len`` characters, for names that become parts of file names.

    Convention:
        The slug of ``text`` when it fits; otherwise its first characters, ``-`` and the
        first 8 hex digits of the SHA-256 of ``text`` (so two long names that share a prefix
        keep different slugs). A name without any ASCII letter or digit (all Cyrillic, all
        CJK) becomes ``"x-"`` and that hash: every name yields a file name.

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: ``max_len`` is below 12 (no room for the hash).

    Example:
        >>> file_slug("FGR+RS")
        'fgr-rs'
        >>> len(file_slug("a" * 200)), file_slug("a" * 200)[:5]
        (60, 'aaaaa')
        >>> file_slug("Модель")
        'x-...'
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__} {text!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 12:
        raise ValueError(f"max_len: expected an int >= 12, got {max_len!r}")
    tag = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    try:
        slug = slugify(text)
    except ValueError:
        return f"x-{tag}"
    if len(slug) <= max_len:
        return slug
    head = slug[: max_len - len(tag) - 1].rstrip("-.")
    return f"{head}-{tag}"
