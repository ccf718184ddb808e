"""The offline sandbox provider: renders real test-card videos with no network and no GPU.
`provider.py` runs and encodes the samples; the picture is `scene.py` (composed from
`drawing.py` and `palette.py`), the frames of each mode `frames.py`, the soundtrack `audio.py`."""
