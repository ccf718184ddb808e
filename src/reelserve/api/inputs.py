"""What a client sends, checked once at the edge: JSON bodies, path and query parameters.

JSON bodies have one parser, with limits a hostile body cannot get past.

`json.loads` alone turns some bodies into a 500: nesting deep enough to exhaust the recursion
limit (`RecursionError`), integers past Python's 4,300-digit conversion limit (`ValueError`);
it also accepts what is not JSON (`NaN`, `Infinity`, UTF-16 bytes) and strings that are not
valid UTF-8 text (lone surrogates from `"\\ud800"`) or hold NUL. `parse_json_body` refuses all
of these with a 400 that names where in the body the problem is, so every route that reads JSON
(`POST /v1/videos/generations`, `POST /v1/videos`) gets the same checks and the same messages.

Path and query parameters are checked by `check_path_and_query`, a dependency of every route
(and called by `api.fastpath` for the status poll it answers itself): the same text check, so
`/v1/tasks/%00` is a 400 naming `task_id` on every database rather than a 500 on PostgreSQL.
`check_language` is the one check of the `language` query parameter (the fast path's and the
documented route's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fastapi import Request

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.text import check_text

# The `language` query parameter's values (CONTRACT.md); messages are in English whichever.
LANGUAGES = ("en", "zh", "ko", "ja")
# Submit bodies are flat (an OpenAI `input_reference` object is the deepest member, at two).
MAX_DEPTH = 32
# Characters of one number literal: seeds need 10 digits, a float with exponent some 25.
MAX_NUMBER_CHARS = 100


@dataclass(frozen=True)
class _LongNumber:
    """A number literal longer than `MAX_NUMBER_CHARS`, kept unconverted until the walk can say
    which member it is (converting a 100,000-digit integer is itself slow, or an error)."""

    length: int


def _parse_int(text: str) -> int | _LongNumber:
    return _LongNumber(len(text)) if len(text) > MAX_NUMBER_CHARS else int(text)


def _parse_float(text: str) -> float | _LongNumber:
    return _LongNumber(len(text)) if len(text) > MAX_NUMBER_CHARS else float(text)


def _parse_constant(name: str) -> object:
    raise InvalidRequest(f"the request body is not valid JSON ({name} is not a JSON number)")


def _member(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse_json_body(raw: bytes) -> object:
    """The JSON value of a request body, or `InvalidRequest` saying what is wrong and where."""
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON (not UTF-8: byte {raw[exc.start]:#04x} at "
            f"offset {exc.start})"
        ) from None
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidRequest(
            f"the request body nests arrays and objects deeper than {MAX_DEPTH} levels"
        ) from None
    check_document(value)
    return value


def check_document(value: object) -> None:
    """Walk a parsed document (without recursion): depth, number sizes and text of every string
    and member name. Errors name the member as `field`, `field.sub` or `field[0]`."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        where = path or "the request body"
        if isinstance(item, str):
            check_text(item, path, what=where)
        elif isinstance(item, _LongNumber):
            raise InvalidRequest(
                f"{where} must be a number of at most {MAX_NUMBER_CHARS} characters "
                f"(got one of {item.length})",
                param=path or None,
            )
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(
                    f"the request body nests arrays and objects deeper than {MAX_DEPTH} levels "
                    f"(at {where})",
                    param=path or None,
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(key, path, what=f"a member name in {where}")
                    stack.append((child, _member(path, key), depth + 1))
            else:
                stack.extend((child, _member(path, i), depth + 1) for i, child in enumerate(item))


def check_params(path_params: Mapping[str, object], query: Iterable[tuple[str, str]]) -> None:
    """Every path and query parameter (names too) is valid UTF-8 text without NUL."""
    for name, value in path_params.items():
        if isinstance(value, str):
            check_text(value, name)
    for name, value in query:
        check_text(name, "", what="a query parameter name")
        check_text(value, name)


def check_language(language: str | None) -> None:
    """`language` (the language of error messages), where given, is one the service knows."""
    if language is not None and language not in LANGUAGES:
        raise InvalidRequest(
            f"language must be one of {', '.join(LANGUAGES)} (got {language!r})", param="language"
        )


async def check_path_and_query(request: Request) -> None:
    """The app-wide dependency form of `check_params`."""
    check_params(request.path_params, request.query_params.multi_items())
