"""Sharded checks on 8 host CPU devices, run in a subprocess by tests/test_parallel.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_vocab.py

(the flag must be set before JAX is imported, hence the separate process). Each check
computes a loss and its gradients with the inputs sharded over a mesh and without any
sharding, in float64, and the script prints one JSON object: the number of devices and,
per check, the largest relative difference between the two. The pytest test asserts on
those numbers.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.host_devices import difference
from tests.torch_ce_reference import torch_cross_entropy

N, D, V = 16, 8, 24  # tokens, hidden size, vocabulary: 8 tokens and 6 classes per shard


def _put(mesh, spec, x):
    return jax.device_put(x, NamedSharding(mesh, spec))


def _inputs(rng):
    logits = rng.normal(size=(N, V)) * 2.0
    logits[3, 5] = logits[10, 20] = -np.inf  # classes a token cannot take
    labels = rng.integers(0, V, size=N)
    labels[[1, 12]] = -100  # ignore_index
    labels[3] = 4
    labels[10] = 19
    return {
        "logits": logits,
        "labels": labels,
        "where": rng.random(N) < 0.8,
        "weights": rng.random(N) * 2.0,
        "class_weights": rng.random(V) + 0.5,
        "hidden": rng.normal(size=(N, D)),
        "weight": rng.normal(size=(D, V)) / np.sqrt(D),
        "bias": rng.normal(size=V) * 0.1,
    }


def _value_and_grad(f, cotangent, argnums=0):
    """``(f(*a), grad of Σ f(*a)·cotangent)``, traced in the caller's jit: the value and
    the gradient in one program, not one compilation each."""

    def value_and_grad(*args):
        scalar = lambda *a: jnp.sum(f(*a) * cotangent)  # noqa: E731
        return f(*args), jax.grad(scalar, argnums=argnums)(*args)

    return value_and_grad


def _cotangent(reduction):
    return np.linspace(0.5, 1.5, N) if reduction == "none" else 1.0


def check_vocab_parallel_cross_entropy(mesh, x):
    """Logits sharded (data, model); the unsharded reference is softmax_cross_entropy.
    Both reductions in one jit for the sharded inputs and one for the unsharded ones."""
    options = {"label_smoothing": 0.1, "ignore_index": -100}
    reductions = ("none", "mean")
    specs = (P("data", "model"), P("data"), P("data"), P("data"), P("model"))

    def sharded(logits, labels, where, weights, class_weights, reduction):
        local = functools.partial(
            jaxloss.vocab_parallel_cross_entropy,
            axis_name="model",
            batch_axis_name="data",
            reduction=reduction,
            **options,
        )
        out = P("data") if reduction == "none" else P()
        return jax.shard_map(
            lambda z, y, m, w, cw: local(z, y, where=m, weights=w, class_weights=cw),
            mesh=mesh,
            in_specs=specs,
            out_specs=out,
        )(logits, labels, where, weights, class_weights)

    def unsharded(logits, labels, where, weights, class_weights, reduction):
        return jaxloss.softmax_cross_entropy(
            logits,
            labels,
            where=where,
            weights=weights,
            class_weights=class_weights,
            reduction=reduction,
            **options,
        )

    def every_reduction(f):
        return jax.jit(
            lambda *args: [
                _value_and_grad(functools.partial(f, reduction=r), _cotangent(r))(*args)
                for r in reductions
            ]
        )

    names = ("logits", "labels", "where", "weights", "class_weights")
    args_sharded = [_put(mesh, s, x[k]) for s, k in zip(specs, names, strict=True)]
    args = [jnp.asarray(x[k]) for k in names]
    got = every_reduction(sharded)(*args_sharded)
    want = every_reduction(unsharded)(*args)
    return {
        f"vocab_parallel_cross_entropy[{r}]": difference(g, w)
        for r, g, w in zip(reductions, got, want, strict=True)
    }


def check_torch_convention(mesh, x):
    """Logits sharded (data, model), every reduction, class weights, label smoothing
    and ignore_index together, against PyTorch's documented formula (float64 numpy).
    Every combination in one jit."""
    logits = np.where(np.isfinite(x["logits"]), x["logits"], -3.0)
    combinations = [
        (reduction, class_weights)
        for reduction in ("none", "sum", "mean")
        for class_weights in (None, x["class_weights"])
    ]

    def one(z, y, cw, reduction):
        options = {"label_smoothing": 0.2, "ignore_index": -100, "reduction": reduction}

        def local(z, y, cw):
            return jaxloss.vocab_parallel_cross_entropy(
                z, y, axis_name="model", batch_axis_name="data", **cw, **options
            )

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P("data", "model"), P("data"), {k: P("model") for k in cw}),
            out_specs=P("data") if reduction == "none" else P(),
        )(z, y, cw)

    @jax.jit
    def every_combination(z, y, class_weights):
        return [
            one(z, y, {} if cw is None else {"class_weights": class_weights}, reduction)
            for reduction, cw in combinations
        ]

    outputs = every_combination(
        _put(mesh, P("data", "model"), logits),
        _put(mesh, P("data"), x["labels"]),
        _put(mesh, P("model"), x["class_weights"]),
    )
    results = {}
    for (reduction, class_weights), got in zip(combinations, outputs, strict=True):
        options = {"label_smoothing": 0.2, "ignore_index": -100, "reduction": reduction}
        want = torch_cross_entropy(logits, x["labels"], weight=class_weights, **options)
        name = "class_weights" if class_weights is not None else "no_class_weights"
        key = f"vocab_parallel_cross_entropy[torch,{name},{reduction}]"
        results[key] = difference(got, want)
    return results


def check_vocab_parallel_fused(mesh, x):
    """Weight sharded along V over "model", tokens over "data"; against the unsharded
    fused_linear_cross_entropy (itself checked against materialized logits). Both
    layouts in one jit for the sharded inputs and one for the unsharded ones."""
    labels = np.where(x["labels"] >= 0, x["labels"], 7)
    labels[[2, 9]] = -100
    options = {
        "chunk_size": 3,  # 8 tokens per data shard: two chunks and a tail of two
        "ignore_index": -100,
        "label_smoothing": 0.1,
        "z_loss": 0.01,
        "logit_soft_cap": 4.0,
    }
    cases = (("dense", "mean"), ("embedding", "none"))

    def w_spec(layout):
        return P(None, "model") if layout == "dense" else P("model", None)

    def sharded(h, w, b, y, m, wt, reduction, layout):
        local = functools.partial(
            jaxloss.vocab_parallel_fused_linear_cross_entropy,
            axis_name="model",
            batch_axis_name="data",
            weight_layout=layout,
            reduction=reduction,
            **options,
        )
        return jax.shard_map(
            lambda h, w, b, y, m, wt: local(h, w, y, bias=b, where=m, weights=wt),
            mesh=mesh,
            in_specs=(P("data", None), w_spec(layout), P("model"), P("data"), P("data"), P("data")),
            out_specs=P("data") if reduction == "none" else P(),
        )(h, w, b, y, m, wt)

    def unsharded(h, w, b, y, m, wt, reduction, layout):
        return jaxloss.fused_linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            where=m,
            weights=wt,
            weight_layout=layout,
            reduction=reduction,
            **options,
        )

    def every_case(f):
        return jax.jit(
            lambda args_per_case: [
                _value_and_grad(
                    functools.partial(f, reduction=reduction, layout=layout),
                    _cotangent(reduction),
                    argnums=(0, 1, 2),
                )(*args)
                for (layout, reduction), args in zip(cases, args_per_case, strict=True)
            ]
        )

    args_sharded, args = [], []
    for layout, _ in cases:
        weight = x["weight"] if layout == "dense" else x["weight"].T
        values = (x["hidden"], weight, x["bias"], labels, x["where"], x["weights"])
        specs = (P("data", None), w_spec(layout), P("model"), P("data"), P("data"), P("data"))
        args_sharded.append([_put(mesh, s, v) for s, v in zip(specs, values, strict=True)])
        args.append([jnp.asarray(v) for v in values])
    got = every_case(sharded)(args_sharded)
    want = every_case(unsharded)(args)
    return {
        f"vocab_parallel_fused_linear_cross_entropy[{layout},{reduction}]": difference(g, w)
        for (layout, reduction), g, w in zip(cases, got, want, strict=True)
    }


def _fused_mean(hidden, labels, where, weights, *, weight, batch_axis_name=None):
    return jaxloss.fused_linear_cross_entropy(
        hidden,
        weight,
        labels,
        where=where,
        weights=weights,
        chunk_size=4,
        batch_axis_name=batch_axis_name,
    )


def _fused_in_shard_map(mesh, weight):
    """Data parallelism inside shard_map: each device loops over its own tokens only."""
    local = functools.partial(_fused_mean, weight=weight, batch_axis_name="batch")
    return jax.shard_map(local, mesh=mesh, in_specs=P("batch"), out_specs=P())


def _policy_gradient(hidden, labels, old, advantages, reference, where, *, weight):
    return jaxloss.fused_linear_policy_gradient_loss(
        hidden,
        weight,
        labels,
        old,
        advantages,
        reference_log_probs=reference,
        kl_coef=0.1,
        where=where,
        aggregation="sequence_mean",
        chunk_size=3,
    )


def _policy_gradient_inputs():
    """8 sequences of 4 tokens (one with no kept token), for the per-sequence means."""
    rng = np.random.default_rng(2)
    shape = (8, 4)
    keep = rng.random(shape) < 0.7
    keep[5] = False
    return (
        rng.normal(size=shape + (D,)),
        rng.integers(0, V, size=shape),
        rng.normal(size=shape) - np.log(V),
        rng.normal(size=shape[:1]),
        rng.normal(size=shape) - np.log(V),
        keep,
    )


def _every_value_and_grad(losses):
    """One jit: ``{name: value_and_grad(loss)(*values[name])}`` for every loss."""
    return jax.jit(
        lambda values: {
            name: jax.value_and_grad(loss)(*values[name]) for name, loss in losses.items()
        }
    )


def check_data_parallel(x):
    """The batch sharded over all 8 devices by NamedSharding, then jit: the mean is global.

    On a mesh of explicit axes (``jax.make_mesh``'s default) and of automatic ones
    (GSPMD); the fused loss also inside shard_map with ``batch_axis_name``. Every loss
    in one jit per mesh; the unsharded results in one jit, shared by both meshes.
    """
    rng = np.random.default_rng(1)
    predictions, targets = rng.normal(size=(N, 3)), rng.normal(size=(N, 3))
    keep = rng.random((N, 3)) < 0.7
    w = rng.random((N, 3))
    labels = np.where(x["labels"] >= 0, x["labels"], 0)
    logits = np.where(np.isfinite(x["logits"]), x["logits"], -30.0)
    weight = jnp.asarray(x["weight"])
    fused_args = (x["hidden"], labels, x["where"], x["weights"])
    results = {}
    expected = None
    for kind in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("batch",), (kind,))
        cases = {
            "squared_error": (
                lambda p, t, m, w: jaxloss.squared_error(
                    p, t, where=m, weights=w, reduction="mean"
                ),
                (predictions, targets, keep, w),
            ),
            "softmax_cross_entropy": (
                lambda z, y, m, w: jaxloss.softmax_cross_entropy(
                    z, y, where=m, weights=w, reduction="mean"
                ),
                (logits, labels, x["where"], x["weights"]),
            ),
            "fused_linear_cross_entropy": (
                functools.partial(_fused_mean, weight=weight),
                fused_args,
            ),
            "fused_linear_cross_entropy[shard_map]": (
                _fused_in_shard_map(mesh, weight),
                fused_args,
            ),
            "fused_linear_policy_gradient_loss": (
                functools.partial(_policy_gradient, weight=weight),
                _policy_gradient_inputs(),
            ),
        }
        if kind == AxisType.Auto:  # GSPMD runs the fused loss correctly but unsplit
            cases = {k: v for k, v in cases.items() if not k.startswith("fused")}
        if expected is None:  # the unsharded results, the same for both meshes
            base = {k: v for k, v in cases.items() if "[" not in k}
            expected = _every_value_and_grad({k: loss for k, (loss, _) in base.items()})(
                {k: [jnp.asarray(v) for v in values] for k, (_, values) in base.items()}
            )
        outputs = _every_value_and_grad({k: loss for k, (loss, _) in cases.items()})(
            {k: [_put(mesh, P("batch"), v) for v in values] for k, (_, values) in cases.items()}
        )
        for name in cases:
            out_sharded, out_single = outputs[name], expected[name.split("[")[0]]
            key = f"data_parallel[{kind.name},{name}]"
            results[key] = difference(out_sharded, out_single)
            # Whether the gradient stayed sharded over the 8 devices (the work was split).
            results[f"sharded_gradient:{key}"] = not out_sharded[1].sharding.is_fully_replicated
    return results


def _preference(hidden, labels, where, ref_hidden, weights, *, weight, ref_weight, **options):
    return jaxloss.fused_linear_preference_loss(
        hidden,
        weight,
        labels,
        where=where,
        reference_hidden=ref_hidden,
        reference_weight=ref_weight,
        weights=weights,
        chunk_size=2,
        **options,
    )


def check_preference_data_parallel():
    """8 pairs of 3-token sequences on 8 devices: `fused_linear_preference_loss` with its
    [16, 3, D] inputs sharded by NamedSharding (chosen rows on devices 0-3, rejected ones
    on 4-7: the loss regroups them by pair), and inside shard_map with
    ``batch_axis_name`` on inputs laid out device by device (each device's chosen, then
    its rejected sequence). Values and gradients against the unsharded loss."""
    rng = np.random.default_rng(3)
    b, t = 8, 3
    keep = rng.random((2 * b, t)) < 0.8
    keep[:, 0] = False
    inputs = (
        rng.normal(size=(2 * b, t, D)),
        rng.integers(0, V, size=(2 * b, t)),
        keep,
        rng.normal(size=(2 * b, t, D)),
        rng.random(b) + 0.5,
    )
    weights = {
        "weight": jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D)),
        "ref_weight": jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D)),
    }
    mesh = jax.make_mesh((8,), ("batch",), (AxisType.Explicit,))
    results = {}
    # Device k holds pair k: its chosen sequence, then its rejected one.
    order = np.stack([np.arange(b), b + np.arange(b)], axis=1).reshape(-1)
    reductions = ("mean", "none")

    def losses(reduction):
        loss = functools.partial(_preference, **weights, reduction=reduction)
        local = jax.shard_map(
            functools.partial(loss, batch_axis_name="batch"),
            mesh=mesh,
            in_specs=P("batch"),
            out_specs=P("batch") if reduction == "none" else P(),
        )
        return loss, local

    def value_and_grad(f, args, reduction):
        cot = jnp.arange(1.0, 1.0 + b) if reduction == "none" else 1.0
        return jax.value_and_grad(lambda *a: jnp.sum(cot * f(*a)))(*args)

    # Two compilations: the unsharded loss for both reductions; on the mesh, the loss on
    # the NamedSharding inputs and the shard_map form on the per-device layout.
    @jax.jit
    def single_device(args):
        return [value_and_grad(losses(r)[0], args, r) for r in reductions]

    @jax.jit
    def on_mesh(args, per_device_args):
        return [
            (
                value_and_grad(losses(r)[0], args, r),
                value_and_grad(losses(r)[1], per_device_args, r),
            )
            for r in reductions
        ]

    per_device = [x[order] if x.shape[0] == 2 * b else x for x in inputs]
    expected = single_device([jnp.asarray(x) for x in inputs])
    got = on_mesh(
        [_put(mesh, P("batch"), x) for x in inputs],
        [_put(mesh, P("batch"), x) for x in per_device],
    )
    for reduction, single, (sharded, (value, grad)) in zip(reductions, expected, got, strict=True):
        key = f"data_parallel[Explicit,fused_linear_preference_loss[{reduction}]]"
        results[key] = difference(sharded, single)
        results[f"sharded_gradient:{key}"] = not sharded[1].sharding.is_fully_replicated
        key = f"data_parallel[Explicit,fused_linear_preference_loss[shard_map,{reduction}]]"
        results[key] = difference((value, np.asarray(grad)[np.argsort(order)]), single)
        results[f"sharded_gradient:{key}"] = not grad.sharding.is_fully_replicated
    # 6 pairs (12 sequences, 3 per device) do not divide among 4 devices.
    mesh = jax.make_mesh((4,), ("batch",), (AxisType.Explicit,), devices=jax.devices()[:4])
    try:
        _preference(*[_put(mesh, P("batch"), x[:12]) for x in inputs[:4]], None, **weights)
        results["preference_uneven_pairs_raise"] = False
    except ValueError as err:
        results["preference_uneven_pairs_raise"] = "divide evenly" in str(err)
    return results


def main():
    jax.config.update("jax_enable_x64", True)
    x = _inputs(np.random.default_rng(0))
    report = {"device_count": jax.device_count()}
    if jax.device_count() == 8:
        mesh = jax.make_mesh((2, 4), ("data", "model"), (AxisType.Explicit,) * 2)
        report.update(check_vocab_parallel_cross_entropy(mesh, x))
        report.update(check_torch_convention(mesh, x))
        report.update(check_vocab_parallel_fused(mesh, x))
        report.update(check_data_parallel(x))
        report.update(check_preference_data_parallel())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
