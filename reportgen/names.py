"""Names from the outside world (file names, layer names) made safe for text and for file names.

A file name on Linux is any bytes but ``/`` and NUL, up to 255 bytes. Python hands bytes that are not UTF-8 to
us as lone surrogates (``bad\\xff.png`` arrives as ``"bad\\udcff.png"``), which no UTF-8 writer accepts (JSON,
safetensors headers, HTML, PDF). And a name we derive from a long one (``maps/<name>.safetensors``) can pass the
255-byte limit. Two helpers, used wherever a name is shown or turned into a file name:

* :func:`readable`: the name as text any writer takes: each undecodable byte as ``\\xNN``.
* :func:`file_part`: a name as one bounded, ASCII path component, with a short hash when it had to be shortened.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re

__all__ = ["readable", "readable_data", "file_part", "shorten", "close_matches", "MAX_PART"]

MAX_PART = 64  # characters (= bytes: ASCII) of a derived name; the longest asset name built on one stays < 160


def readable(text: str) -> str:
    """``text`` with every lone surrogate shown as an escape: ``\\xNN`` for an undecodable byte of a file name
    (``os.fsdecode``'s surrogate escapes), ``\\udNNN`` for any other; text that is valid Unicode is returned as is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _digest(text: str) -> str:
    """8 hex digits of SHA-256 over the name's real bytes (distinct names that read alike get distinct hashes)."""
    return hashlib.sha256(os.fsencode(text)).hexdigest()[:8]


def shorten(part: str, original: str, limit: int = MAX_PART) -> str:
    """``part`` (ASCII, derived from ``original``) cut to at most ``limit`` characters: its start, ``-`` and a hash
    of ``original``, so two long names that share a start stay apart. Parts within the limit are returned as is."""
    if len(part) <= limit:
        return part
    return f"{part[:limit - 9].rstrip('-') or '_'}-{_digest(original)}"


def file_part(name: str, limit: int = MAX_PART) -> str:
    """A name (e.g. a layer's qualified name) as part of a file name: ``[A-Za-z0-9_.-]`` only, never starting with
    ``.``, at most ``limit`` bytes. Qualified module names are dotted words and come out unchanged; a model may
    register a submodule under any string, so anything else (``/``, ``..``) is replaced and no asset can leave its
    folder; a long one is cut and hashed (:func:`shorten`)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    return shorten(safe or "_", name, limit)


def readable_data(value: object) -> object:
    """``value`` (plain data: dicts, lists, strings, numbers) with every string, key or value, made ``readable``."""
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {readable_data(k): readable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [readable_data(v) for v in value]
    return value


def close_matches(word: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Up to ``n`` candidates close to ``word`` (typos, missing prefixes), best first."""
    if len(word) > 80:  # no name is that long; and difflib's work grows with it
        return []
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        tail = word.rsplit(".", 1)[-1]
        for cand in candidates:
            if cand not in found and (cand.endswith("." + tail) or cand.startswith(word + ".")):
                found.append(cand)
            if len(found) >= n:
                break
    return found
