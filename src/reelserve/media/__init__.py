"""Media files, and only that: encoding, probing and thumbnailing videos (`video.py`), an
upstream MP4's streams (`remux.py`), and input images fetched, decoded and fitted (`images/`)."""
