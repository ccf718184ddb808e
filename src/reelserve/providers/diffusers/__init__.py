"""Local open-weight models through diffusers: the provider (`provider.py`) and the per-family
options and authors' defaults (`options.py`)."""
