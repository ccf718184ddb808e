"""Configuration: the server's settings (`server.py`, from the environment, a TOML file and
flags) and the Google Veo credentials and prices (`google.py`)."""

from reelserve.settings.server import Settings

__all__ = ["Settings"]
