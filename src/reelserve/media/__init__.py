"""Media handling: encoding and probing videos, decoding and fitting input images."""
