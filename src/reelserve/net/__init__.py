"""Outbound connections to addresses a client chose: the SSRF guard (`guard.py`) that image
fetching and webhook delivery both go through."""
