"""Signed file tokens: every altered character is refused, expiry is enforced."""

from __future__ import annotations

import string

import pytest

from reelserve.storage.signing import FileGrant, Signer, TokenError


def test_any_single_character_change_is_refused() -> None:
    signer = Signer(b"secret")
    token = signer.sign(FileGrant("task_X/0.mp4", "video/mp4", 4_000_000_000))
    assert signer.verify(token, now=0).key == "task_X/0.mp4"
    alphabet = string.ascii_letters + string.digits + "-_."
    for i, original in enumerate(token):
        for replacement in alphabet:
            if replacement == original:
                continue
            forged = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(TokenError):
                signer.verify(forged, now=0)


def test_other_secret_expired_and_malformed() -> None:
    token = Signer(b"a").sign(FileGrant("k", "image/jpeg", 100))
    with pytest.raises(TokenError) as info:
        Signer(b"b").verify(token, now=0)
    assert not info.value.expired
    with pytest.raises(TokenError) as info:
        Signer(b"a").verify(token, now=101)
    assert info.value.expired
    for bad in ("", ".", "abc", "abc.def.ghi"):
        with pytest.raises(TokenError):
            Signer(b"a").verify(bad, now=0)
