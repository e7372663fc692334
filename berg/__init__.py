"""berg: in silico brain responses from published encoding models, behind one API.

``import berg`` is light: torch, the store and model code are imported only when first used.

>>> import berg
>>> berg.list_models()
>>> model = berg.get_encoding_model("fmri-bold5000-resnet18", subject=1)
>>> responses = berg.encode(model, ["image.jpg"])
"""

from __future__ import annotations

from typing import Any

from berg._version import __version__
from berg.errors import (
    ArtifactError,
    BERGError,
    InvalidParameterError,
    ModelLoadError,
    ModelNotFoundError,
    StimulusError,
)

__all__ = [
    "__version__",
    "BERG",
    "BERGError",
    "ArtifactError",
    "InvalidParameterError",
    "ModelLoadError",
    "ModelNotFoundError",
    "StimulusError",
    "list_models",
    "get_model_catalog",
    "describe",
    "get_encoding_model",
    "encode",
    "get_model_metadata",
    "fetch",
    "save",
    "save_nifti",
    "save_gifti",
    "load_responses",
    "build",
    "default",
    "EncodePlan",
    "run",
]

_default_instance = None


def default():
    """The shared :class:`BERG` instance behind the module-level shortcuts (built from env settings)."""
    global _default_instance
    if _default_instance is None:
        from berg.api import BERG

        _default_instance = BERG()
    return _default_instance


def _shortcut(name: str):
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(default(), name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"``BERG().{name}(...)`` on the default instance (see :class:`berg.BERG`)."
    return call


def _build(model_id: str, data_dir: Any, **kwargs: Any) -> Any:
    """:func:`berg.buildable.build_model` with the default client unless ``client=`` is given."""
    from berg.buildable import build_model

    kwargs.setdefault("client", default())
    return build_model(model_id, data_dir, **kwargs)


list_models = _shortcut("list_models")
get_model_catalog = _shortcut("get_model_catalog")
describe = _shortcut("describe")
get_encoding_model = _shortcut("get_encoding_model")
encode = _shortcut("encode")
get_model_metadata = _shortcut("get_model_metadata")
fetch = _shortcut("fetch")


def __getattr__(name: str) -> Any:
    # Heavy pieces are imported on first access so that `import berg` stays fast and torch-free.
    if name == "BERG":
        from berg.api import BERG

        return BERG
    if name in ("save", "save_nifti", "save_gifti", "load_responses"):
        import berg.io

        return getattr(berg.io, name)
    if name == "build":
        return _build
    if name in ("run", "runner", "EncodePlan"):  # berg.run(plan) is a function; berg.runner.status(RUN) ...
        import berg.runner

        return {"run": berg.runner.run, "runner": berg.runner, "EncodePlan": berg.runner.EncodePlan}[name]
    raise AttributeError(f"module 'berg' has no attribute {name!r}")
