"""Local open-weight models through diffusers. The provider (`provider.py`: a task's samples,
the device lock, encoding) runs a loaded model (`runtime.py`: the pipeline call and its step
callback) that `loading.py` loaded and configured; `plan.py` maps a request onto the model. The
catalog of local models is validated at startup without torch (`catalog.py`), from the typed
options (`options.py`), the checkpoint's geometry (`checkpoint.py`) and the authors' defaults
(`authors.py`); `checks.py` checks what only diffusers can judge."""
