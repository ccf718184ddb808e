"""The vocabulary, with no I/O: the request (`spec.py`) and its validation against the models
(`models.py`), the task's states and error codes (`task.py`), typed results and task views
(`result.py`), the errors and their envelope types (`errors.py`), the one JSON encoder
(`wire.py`), ids and text checks.

Nothing in this package performs I/O or imports the rest of reelserve (checked by import-linter),
so it is the easiest place to read and test.
"""
