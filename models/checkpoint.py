"""Checkpoints: a directory with ``params.safetensors`` (weights, no pickle) and ``meta.json``.

``meta.json`` says everything needed to rebuild and serve the model: family,
architecture and its settings, class names, input layout, normalisation, training data
and split, metrics and the harstream version that wrote it. Loading checks all of it and
fails with a ``CheckpointError`` that names the problem, never a bare traceback.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

FORMAT = "harstream-checkpoint"
FORMAT_VERSION = 1
PARAMS_FILE = "params.safetensors"
META_FILE = "meta.json"
REQUIRED_META = ("family", "arch", "arch_config", "name", "version")


def _version() -> str:
    """The installed harstream's version, for the metadata (read from the installed
    distribution, so this lower layer does not import the top-level package)."""
    try:
        return importlib.metadata.version("harstream")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "0.0.0+unknown"


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, foreign or does not match its architecture."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict of leaves -> ``{"a/b/c": leaf}`` (safetensors stores flat names)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save(path: str | Path, params: Any, meta: dict[str, Any]) -> Path:
    """Write ``params`` and ``meta`` to the checkpoint directory ``path`` (created if needed)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(params).items()}
    # safetensors' save_file creates its file mode 0600 whatever the umask, unlike meta.json
    # and curves.png beside it (0644 under the usual umask 022): written like them instead
    (path / PARAMS_FILE).write_bytes(safetensors_bytes(arrays))
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "harstream_version": _version()}
    full.update(meta)
    (path / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return path


def family_meta(
    family: str, arch: str, config: dict[str, Any], meta: dict[str, Any], required: Sequence[str]
) -> dict[str, Any]:
    """Metadata for one family's checkpoint, refusing to write one that lacks ``required`` keys."""
    full = {"family": family, "arch": arch, "arch_config": config, **meta}
    missing = [key for key in required if key not in full]
    if missing:
        raise ValueError(f"{family} checkpoint metadata needs {missing}")
    return full


def build_from_meta(
    path: str | Path, family: str, build: Callable[[str, dict[str, Any]], Any]
) -> tuple[Any, dict[str, Any]]:
    """Read ``path``'s metadata and rebuild its (untrained) module with ``build(arch, config)``.

    Refuses a checkpoint of another family, or one whose architecture settings ``build``
    rejects, with a ``CheckpointError``.
    """
    meta = load_meta(path)
    if meta["family"] != family:
        raise CheckpointError(f"{path} holds a {meta['family']!r} model, not {family}")
    try:
        model = build(meta["arch"], meta["arch_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model, meta


def check_classes(path: str | Path, meta: dict[str, Any], num_classes: int) -> None:
    """A classifier's checkpoint must name exactly one class per output."""
    n = len(meta.get("classes", []))
    if n != num_classes:
        raise CheckpointError(f"{path}: {n} class names for a {num_classes}-class model")


def load_meta(path: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file; a checkpoint is a directory holding {PARAMS_FILE} and {META_FILE}"
        )
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a harstream checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{meta_path} is not valid JSON ({exc}); the file is damaged"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path} is not harstream checkpoint metadata (no format={FORMAT!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {meta.get('format_version')!r}; "
            f"this harstream reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks the keys {missing}")
    return meta


def load(path: str | Path, expected: Any | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(params, meta)``.

    ``expected`` is a parameter tree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
    ``jax.eval_shape`` of the architecture's init); when given, every name, shape and
    dtype must match it, so a checkpoint of another architecture is refused clearly.
    """
    path = Path(path)
    meta = load_meta(path)
    params_path = path / PARAMS_FILE
    if not params_path.is_file():
        raise CheckpointError(f"{path} lacks {PARAMS_FILE}")
    try:
        flat = load_file(str(params_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {params_path}: {exc} (truncated or not safetensors?)"
        ) from None
    if expected is not None:
        _check_matches(flatten(expected), flat, path)
    return unflatten(flat), meta


def _check_matches(want: dict[str, Any], got: dict[str, np.ndarray], path: Path) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{path} does not match its architecture: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, spec in want.items():
        if tuple(spec.shape) != tuple(got[name].shape) or np.dtype(spec.dtype) != got[name].dtype:
            raise CheckpointError(
                f"{path}: parameter {name} is {got[name].dtype}{list(got[name].shape)}, "
                f"the architecture needs {np.dtype(spec.dtype)}{list(spec.shape)}"
            )
