"""The offline sandbox provider: renders real test-card videos with no network and no GPU."""
