"""First and last frame reach the model: every condition a request carries is applied.

LTX-2's `LTX2VideoCondition(index=...)` is a *latent* frame index; an index past the last latent
frame is dropped by the pipeline with the warning "This condition will be skipped" (diffusers 0.42
`pipelines/ltx2/pipeline_ltx2_condition.py`), and the video then ignores the last frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from reelserve.domain.models import ModelEntry
from reelserve.media.video import decode_frames
from reelserve.providers.diffusers.catalog import prepare_local_models
from reelserve.providers.diffusers.provider import DiffusersProvider
from tests import tiny_pipelines


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> DiffusersProvider:
    checkpoint = tiny_pipelines.save_ltx2(tmp_path_factory.mktemp("ckpt") / "ltx2")
    entry = ModelEntry(
        id="ltx2",
        provider="diffusers",
        modes=["t2v", "i2v", "flf2v"],
        durations=[1, 2],
        default_duration=1,
        resolutions=["720p"],
        audio=True,
        fps=8,
        options={
            "family": "ltx2",
            "checkpoint": str(checkpoint),
            "dtype": "float32",
            "num_inference_steps": 2,
            "max_sequence_length": 16,
            "max_pixels": 2048,
        },
    )
    return DiffusersProvider(prepare_local_models([entry]), device="cpu")


@pytest.fixture
def diffusers_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """diffusers' own log records (its library logger does not propagate to the root)."""
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("duration", [1, 2])
def test_ltx2_first_and_last_frame_both_condition_the_video(
    provider: DiffusersProvider,
    tmp_path: Path,
    diffusers_log: pytest.LogCaptureFixture,
    duration: int,
) -> None:
    body = {"model": "ltx2", "prompt": "a red car", "seed": 4, "duration": duration}
    one = tiny_pipelines.render(provider, {**body, "mode": "flf2v"}, tmp_path / "a")
    skipped = [r.getMessage() for r in diffusers_log.records if "will be skipped" in r.getMessage()]
    assert not skipped, skipped
    # The last frame is used: another last image (same seed, same first frame) changes the video.
    other = tiny_pipelines.render(
        provider, {**body, "mode": "flf2v"}, tmp_path / "b", last_colour=(10, 10, 200)
    )
    a = np.stack(list(decode_frames(one[0].path)))
    b = np.stack(list(decode_frames(other[0].path)))
    assert a.shape == b.shape
    assert not np.array_equal(a, b), "the last frame image made no difference to the video"
