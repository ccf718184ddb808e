"""Outbound connections to addresses a client chose: the SSRF guard that image fetching and
webhook delivery both go through. `guard.py` decides what a URL may reach (its errors, the
policy, the checks), `addresses.py` what an address is (pure), `transport.py` sends only to a
checked address and checks every redirect hop again."""
