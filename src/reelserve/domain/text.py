"""The one check of text that comes from a client: valid Unicode (so valid UTF-8), without NUL.

Python strings can hold what UTF-8 cannot: a JSON escape such as `"\\ud800"` decodes to a lone
surrogate, which every later `.encode()` (a log line, an answer, a hash of the prompt) fails
on. NUL decodes fine from a path (`%00`), a query or JSON (`"\\u0000"`), but PostgreSQL refuses
it in text. Either would turn into a 500 or a failed task far from where it came in, so every
entry point (the JSON body parser, the string fields of a submit, path and query parameters)
calls `check_text` first, and the client gets a 400 naming the field instead.
"""

from __future__ import annotations

from reelserve.domain.errors import InvalidRequest


def text_problem(value: str) -> str | None:
    """What is wrong with `value` as client text, or None if nothing is."""
    if value.isascii():  # the common case, and a fast one: only NUL can be wrong
        index = value.find("\x00")
        return None if index < 0 else f"a NUL character at position {index}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return f"a lone surrogate \\u{code:04x} at position {exc.start}, which is not valid UTF-8"
    index = value.find("\x00")
    return None if index < 0 else f"a NUL character at position {index}"


def check_text(value: str, name: str, *, what: str | None = None) -> str:
    """`value`, or `InvalidRequest` for the field `name` if it is not valid UTF-8 text without
    NUL. The message calls the value `what` (default: the field's name)."""
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequest(
            f"{what or name} must be valid UTF-8 text without NUL characters (got {problem})",
            param=name or None,
        )
    return value
