"""Google Veo 3.1 on the Gemini API and Vertex AI: the provider (`provider.py`: one task fanned
out into operations, their outcome and usage), one attempt's shared state and waiting
(`attempt.py`), sending a request once (`submit.py`), polling and downloading (`collect.py`),
the REST client (`client.py`), request bodies and answers as data (`wire.py`), the submit check
and model listing (`capabilities.py`), credentials and rate limits (`credentials.py`), and
what each backend accepts (`rules.py`)."""
