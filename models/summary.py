"""A Keras-like layer table for any Flax Linen module.

The top-level submodule calls are intercepted while the model is traced abstractly
(``jax.eval_shape``: nothing is computed or allocated), which gives their order, input and
output shapes; parameter counts come from the parameter tree. Shape changes made between
layers by plain functions (pooling, reshapes) appear as rows of their own, so the table
reads like the article's Keras summary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np


def layer_rows(
    model: nn.Module, example: Any, **call_kwargs: Any
) -> tuple[list[tuple[str, str, tuple, int]], int]:
    """``([(name, type, output_shape, params)], total_params)`` for one call on ``example``.

    ``example`` is an array or ``jax.ShapeDtypeStruct`` with a batch dimension.
    """
    calls: list[tuple[str, str, tuple | None, tuple, set[str]]] = []
    active: list[set[str]] = []  # top-level names touched by the outermost call in progress

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not module.path:
            return next_fun(*args, **kwargs)
        if active:  # nested (e.g. an LSTM cell inside its RNN): credit the outer row
            active[-1].add(module.path[0])
            return next_fun(*args, **kwargs)
        active.append({module.path[0]})
        try:
            out = next_fun(*args, **kwargs)
        finally:
            touched = active.pop()
        first = args[0] if args else None
        calls.append(
            (
                module.path[0],
                type(module).__name__,
                tuple(first.shape) if hasattr(first, "shape") else None,
                tuple(out.shape) if hasattr(out, "shape") else (),
                touched,
            )
        )
        return out

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x, **call_kwargs)
        with nn.intercept_methods(record):
            model.apply(variables, x, **call_kwargs)
        return variables

    variables = jax.eval_shape(run, example)
    params = variables.get("params", {})
    rows: list[tuple[str, str, tuple, int]] = []
    counted: set[str] = set()
    previous = tuple(example.shape)
    for name, kind, in_shape, out_shape, touched in calls:
        if in_shape is not None and in_shape != previous:
            rows.append(("pool/reshape", "function", in_shape, 0))
        owned = sorted((touched | {name}) - counted)
        counted.update(owned)
        rows.append((name, kind, out_shape, sum(_count(params.get(k, {})) for k in owned)))
        previous = out_shape
    return rows, _count(params)


def _count(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def format_summary(title: str, rows: list[tuple[str, str, tuple, int]], total: int) -> str:
    """The table as text; the batch dimension prints as ``None`` like Keras."""

    def shape(s: tuple) -> str:
        return "(" + ", ".join(["None", *map(str, s[1:])]) + ")" if s else "-"

    cells = [(f"{n} ({k})", shape(s), f"{p:,}") for n, k, s, p in rows]
    w1 = max(len("Layer (type)"), *(len(c[0]) for c in cells))
    w2 = max(len("Output Shape"), *(len(c[1]) for c in cells))
    w3 = max(len("Param #"), *(len(c[2]) for c in cells))
    rule = "=" * (w1 + w2 + w3 + 4)
    lines = [
        f'Model: "{title}"',
        rule,
        f"{'Layer (type)':<{w1}}  {'Output Shape':<{w2}}  {'Param #':>{w3}}",
        rule,
    ]
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c:>{w3}}" for a, b, c in cells]
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {total:,}"]
    return "\n".join(lines)


def summarize(model: nn.Module, example: Any, title: str = "", **call_kwargs: Any) -> str:
    """Layer table of ``model`` called on ``example`` (shape and dtype only are used)."""
    rows, total = layer_rows(model, example, **call_kwargs)
    return format_summary(title or type(model).__name__, rows, total)
