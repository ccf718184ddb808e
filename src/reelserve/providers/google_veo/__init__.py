"""Google Veo 3.1 on the Gemini API and Vertex AI: the provider (`provider.py`), its credentials
and rate limits (`credentials.py`), and what each backend accepts (`rules.py`)."""
