"""The local-model options only diffusers itself can judge, checked at startup where it is
installed (the workers): `pipeline_kwargs` against the pipelines' `__call__` signatures, and
`attention_backend` against the backends diffusers has."""

from __future__ import annotations

from typing import Any

from reelserve.providers.diffusers.catalog import LocalModel
from reelserve.providers.diffusers.options import RESERVED_CALL_ARGUMENTS, LocalModelError
from reelserve.providers.diffusers.plan import PIPELINES


def check_runtime_options(models: dict[str, LocalModel]) -> None:
    """The options only diffusers itself can judge, at startup: `pipeline_kwargs` against the
    `__call__` signatures of the pipelines the model runs, and `attention_backend` against the
    backends diffusers has. Raises `LocalModelError` naming the model, the option, what it may
    be and what it was."""
    import diffusers
    from diffusers.models.attention_dispatch import AttentionBackendName

    backends = sorted(b.value for b in AttentionBackendName)
    for model in models.values():
        where = f'model "{model.entry.id}"'
        options = model.options
        if options.attention_backend is not None and options.attention_backend not in backends:
            raise LocalModelError(
                f"{where}: options.attention_backend must be one of {', '.join(backends)} "
                f"(got {options.attention_backend!r})"
            )
        if not options.pipeline_kwargs:
            continue
        classes = sorted({PIPELINES[options.family][mode] for mode in model.entry.modes})
        signatures = {name: _signature(getattr(diffusers, name)) for name in classes}
        allowed: dict[str, Any] = {}
        for parameters in signatures.values():
            for key, parameter in parameters.items():
                if key not in RESERVED_CALL_ARGUMENTS:
                    allowed.setdefault(key, parameter.default)
        for key, value in options.pipeline_kwargs.items():
            if key not in allowed:
                raise LocalModelError(
                    f"{where}: options.pipeline_kwargs.{key} is not an argument of "
                    f"{' or '.join(classes)}; allowed: {', '.join(sorted(allowed))}"
                )
            expected, given = _kind(allowed[key]), _kind(value)
            fits = expected in (None, given) or (expected, given) == ("number", "integer")
            if value is not None and not fits:
                raise LocalModelError(
                    f"{where}: options.pipeline_kwargs.{key} must be a {expected} like the "
                    f"pipeline's default {allowed[key]!r} (got {value!r})"
                )


def _signature(cls: Any) -> dict[str, Any]:
    import inspect

    parameters = inspect.signature(cls.__call__).parameters
    return {k: p for k, p in parameters.items() if k not in ("self", "kwargs")}


def _kind(value: Any) -> str | None:
    """The JSON kind of a value (a default's, or an option's); None where any value goes."""
    import inspect

    if value is None or value is inspect.Parameter.empty:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return None
