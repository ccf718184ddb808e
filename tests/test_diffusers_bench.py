"""`python -m bench.gpu_pipeline --tiny` runs every setup of the GPU check on the CPU and writes
the same JSON a GPU run writes (figures of a tiny model: they prove the code path, nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from bench import gpu_pipeline


def test_tiny_bench_writes_the_report(tmp_path: Path) -> None:
    assert gpu_pipeline.main(["--tiny", "--out", str(tmp_path), "--measure", "2"]) == 0
    report = json.loads((tmp_path / "gpu_pipeline.json").read_text())
    assert report["tiny"] is True and report["frames"] == 9
    assert report["rounds"] == {"warmup": 2, "measure": 2, "run": 4}
    setups = report["setups"]
    assert list(setups) == ["native", "cudnn", "compiled", "distilled"]
    assert setups["compiled"]["skipped"].startswith("compilation off")  # the CPU default
    for name in ("native", "distilled"):
        step = setups[name]["seconds_per_step"]
        assert 0 < step["min"] <= step["median"] <= step["max"]
        assert setups[name]["seconds_per_video"] > 0
    assert (setups["native"]["passes_per_step"], setups["distilled"]["passes_per_step"]) == (2, 1)
    assert setups["distilled"]["steps_per_video"] == 4
    assert report["vae_decode_seconds"]["timed"] > 0
    assert report["reference_seconds_per_step"]["LightX2V"] == 5.18


def test_a_budget_too_small_skips_rounds_and_says_so(tmp_path: Path) -> None:
    assert gpu_pipeline.main(["--tiny", "--out", str(tmp_path), "--budget", "0"]) == 0
    report = json.loads((tmp_path / "gpu_pipeline.json").read_text())
    assert report["rounds"]["run"] == 0
    assert "budget of 0 s" in report["setups"]["native"]["skipped"]
    assert report["setups"]["native"]["seconds_per_step"] is None
