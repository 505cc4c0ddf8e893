"""Checks on two JAX processes of 4 host CPU devices each, run by tests/test_multiprocess.py.

    python -c "from tests.multiprocess import *; print(run_workers(
        'tests/multiprocess_checks.py', num_processes=2, devices_per_process=4))"

Every process builds the same global batch from a fixed seed, turns it into global arrays
over a mesh of the 8 devices of both processes (``jax.make_array_from_process_local_data``:
each process passes only its own rows; ``jax.make_array_from_callback``: each device's
block) and runs the jaxloss function jitted (or in ``shard_map``). It then compares what
it holds of the result (the value and its addressable gradient shards) against a
single-process float64 computation of the whole global batch, on its first device, and
prints one JSON object: per check and input dtype, the largest relative difference.

The two processes hold different numbers of valid (unmasked) tokens, and the second
process's tokens have larger losses, so a loss that averaged per process and then
averaged the two means would be visibly wrong: the ``mean_of_means`` entries measure
exactly that wrong answer, for the test to show that the comparison catches it.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.multiprocess import initialize

N, D, V, K = 32, 8, 16, 3  # tokens (16 per process), hidden size, vocabulary, outputs
VALID = (13, 5)  # valid tokens of process 0 and of process 1
DTYPES = {"float64": np.float64, "float32": np.float32}


def global_batch():
    """The global batch, float64: process p's rows are [16p, 16p + 16)."""
    rng = np.random.default_rng(0)
    half = N // 2
    keep = np.zeros(N, bool)
    for p, valid in enumerate(VALID):
        keep[p * half + rng.permutation(half)[:valid]] = True
    scale = np.repeat([0.5, 3.0], half)[:, None]  # process 1: confident, often wrong
    labels = rng.integers(0, V, size=N)
    labels[~keep & (np.arange(N) % 3 == 0)] = -100  # some masked tokens are ignore_index
    return {
        "keep": keep,
        "weights": rng.random(N) + 0.5,
        "logits": rng.normal(size=(N, V)) * scale,
        "labels": labels,
        "class_weights": rng.random(V) + 0.5,
        "binary_logits": rng.normal(size=(N, K)) * scale,
        "binary_labels": (rng.random((N, K)) < 0.5).astype(np.float64),
        "mean": rng.normal(size=(N, K)) * scale,
        "log_scale": rng.normal(size=(N, K)) * 0.3,
        "targets": rng.normal(size=(N, K)),
        "hidden": rng.normal(size=(N, D)) * scale,
        "weight": rng.normal(size=(D, V)) / np.sqrt(D),
        "bias": rng.normal(size=V) * 0.1,
        "image": rng.normal(size=(N, D)) * scale,
        "text": rng.normal(size=(N, D)),
    }


# --------------------------------------------------------------------------------------
# Global arrays and the comparison
# --------------------------------------------------------------------------------------


def data_mesh(axis_type=AxisType.Auto) -> Mesh:
    """The 8 devices on one axis "batch", process 0's four first: the batch spans both."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("batch",), axis_types=(axis_type,))


def vocab_mesh() -> Mesh:
    """A (model=2, data=4) mesh whose "model" (vocabulary) axis is the process index."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices).reshape(2, 4), ("model", "data"))
    assert all(d.process_index == k for k in range(2) for d in mesh.devices[k])
    return mesh


def my_rows() -> slice:
    """The rows of the global batch that this process holds."""
    half = N // jax.process_count()
    return slice(jax.process_index() * half, (jax.process_index() + 1) * half)


def from_local_rows(mesh, x):
    """A global array sharded along its first axis, from this process's rows only."""
    rows = x[my_rows()]
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), rows, x.shape)


def from_blocks(mesh, spec, x):
    """A global array, each device's block cut from the global numpy array."""
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])


def cast(x, dtype):
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x


def difference(result, reference) -> float:
    """max |result − reference| / max |reference| over the shards this process holds.

    ``result`` is a pytree of global arrays, ``reference`` the same pytree computed on one
    device; each addressable shard is compared with the reference's block at its index.
    NaN or a missing shard counts as ∞.
    """
    worst = 0.0
    for x, y in zip(jax.tree.leaves(result), jax.tree.leaves(reference), strict=True):
        y = np.asarray(y, np.float64)
        shards = x.addressable_shards
        if x.shape != y.shape or not shards:
            return float("inf")
        scale = max(np.max(np.abs(y), initial=0.0), 1e-300)
        for shard in shards:
            err = np.max(np.abs(np.asarray(shard.data, np.float64) - y[shard.index]), initial=0)
            if not np.isfinite(err):
                return float("inf")
            worst = max(worst, float(err / scale))
    return worst


def compare(name, distributed, reference, x, names, build, *, argnums=0):
    """``{name[dtype]: difference}`` of the value and gradients of ``distributed``, called on
    global arrays (``build(name, value)`` for each of ``names``), against ``reference``
    called on the same values as float64 arrays of one device.

    The float32 run's reference is the float64 computation on the same float32-rounded
    numbers.
    """
    results = {}
    # One jitted function each, called for both dtypes: the reference (float64 inputs
    # both times) compiles once, not once per dtype.
    distributed = jax.jit(jax.value_and_grad(distributed, argnums=argnums))
    reference = jax.jit(jax.value_and_grad(reference, argnums=argnums))
    for tag, dtype in DTYPES.items():
        values = [cast(x[k], dtype) for k in names]
        args = [build(k, v) for k, v in zip(names, values, strict=True)]
        got = distributed(*args)
        exact = [jnp.asarray(cast(v, np.float64)) for v in values]
        want = reference(*exact)
        results[f"{name}[{tag}]"] = difference(got, want)
    return results


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def _softmax_ce(logits, labels, keep, weights):
    return jaxloss.softmax_cross_entropy(
        logits, labels, where=keep, weights=weights, ignore_index=-100, reduction="mean"
    )


def _sigmoid_bce(logits, labels, keep):
    return jaxloss.sigmoid_binary_cross_entropy(
        logits, labels, where=keep[:, None], reduction="mean"
    )


def _gaussian_nll(mean, targets, log_scale, keep):
    return jaxloss.gaussian_nll(
        mean, targets, log_scale=log_scale, where=keep[:, None], reduction="mean"
    )


MEAN_LOSSES = {
    "softmax_cross_entropy": (_softmax_ce, ("logits", "labels", "keep", "weights")),
    "sigmoid_binary_cross_entropy": (_sigmoid_bce, ("binary_logits", "binary_labels", "keep")),
    "gaussian_nll": (_gaussian_nll, ("mean", "targets", "log_scale", "keep")),
}


def check_global_mean(x):
    """The batch sharded across both processes, jitted reduction="mean": value and
    gradient (of the predictions, and of the log-scale) equal the global mean's; and the
    mean of the per-process means, the wrong answer, for comparison."""
    mesh = data_mesh()
    results = {}
    for name, (loss, names) in MEAN_LOSSES.items():
        build = lambda k, v: from_local_rows(mesh, v)  # noqa: E731
        argnums = (0, 2) if name == "gaussian_nll" else 0
        results.update(compare(f"mean:{name}", loss, loss, x, names, build, argnums=argnums))
        # The wrong answer: each process averages its own rows, then the two means.
        loss = jax.jit(loss)
        local_mean = loss(*[jnp.asarray(x[k][my_rows()]) for k in names])
        means = multihost_utils.process_allgather(local_mean)
        exact = loss(*[jnp.asarray(x[k]) for k in names])
        results[f"mean_of_means:{name}"] = float(abs(np.mean(means) - exact) / abs(exact))
    return results


def _fused(hidden, weight, labels, keep, weights, *, batch_axis_name=None):
    return jaxloss.fused_linear_cross_entropy(
        hidden,
        weight,
        labels,
        where=keep,
        weights=weights,
        ignore_index=-100,
        chunk_size=3,  # 4 tokens per device: a chunk and a tail
        batch_axis_name=batch_axis_name,
    )


def _materialized_ce(hidden, weight, labels, keep, weights):
    return _softmax_ce(hidden @ weight, labels, keep, weights)


def check_fused(x):
    """fused_linear_cross_entropy, tokens sharded across processes, weight replicated:
    plain jit (on a mesh of automatic axes, and of explicit ones, where the function
    splits the work over the devices itself), and shard_map with batch_axis_name;
    against materialized logits."""
    names = ("hidden", "weight", "labels", "keep", "weights")
    results = {}
    for kind in (AxisType.Auto, AxisType.Explicit):
        mesh = data_mesh(kind)

        def build(k, v, mesh=mesh):
            return from_blocks(mesh, P(), v) if k == "weight" else from_local_rows(mesh, v)

        cases = {f"fused[jit,{kind.name}]": _fused}
        if kind == AxisType.Auto:
            cases["fused[shard_map]"] = jax.shard_map(
                functools.partial(_fused, batch_axis_name="batch"),
                mesh=mesh,
                in_specs=(P("batch"), P(), P("batch"), P("batch"), P("batch")),
                out_specs=P(),
            )
        for name, loss in cases.items():
            results.update(compare(name, loss, _materialized_ce, x, names, build, argnums=(0, 1)))
    return results


def check_vocab_parallel(x):
    """The vocabulary split between the two processes ("model"), the tokens over the four
    devices of each ("data"): vocab_parallel_cross_entropy (mean and none) and
    vocab_parallel_fused_linear_cross_entropy, against the unsharded loss."""
    mesh = vocab_mesh()
    specs = {
        "logits": P("data", "model"),
        "hidden": P("data", None),
        "weight": P(None, "model"),
        "bias": P("model"),
        "class_weights": P("model"),
    }

    def build(k, v):
        return from_blocks(mesh, specs.get(k, P("data")), v)

    results = {}
    options = {"ignore_index": -100, "label_smoothing": 0.1}
    names = ("logits", "labels", "keep", "weights", "class_weights")
    cotangent = np.linspace(0.5, 1.5, N)
    for reduction in ("mean", "none"):

        def sharded(z, y, m, w, cw, reduction=reduction):
            local = functools.partial(
                jaxloss.vocab_parallel_cross_entropy,
                axis_name="model",
                batch_axis_name="data",
                reduction=reduction,
                **options,
            )
            out = jax.shard_map(
                lambda z, y, m, w, cw: local(z, y, where=m, weights=w, class_weights=cw),
                mesh=mesh,
                in_specs=tuple(specs.get(k, P("data")) for k in names),
                out_specs=P() if reduction == "mean" else P("data"),
            )(z, y, m, w, cw)
            return jnp.sum(out * cotangent) if reduction == "none" else out

        def unsharded(z, y, m, w, cw, reduction=reduction):
            out = jaxloss.softmax_cross_entropy(
                z, y, where=m, weights=w, class_weights=cw, reduction=reduction, **options
            )
            return jnp.sum(out * cotangent) if reduction == "none" else out

        name = f"vocab_parallel_ce[{reduction}]"
        results.update(compare(name, sharded, unsharded, x, names, build))

    names = ("hidden", "weight", "bias", "labels", "keep", "weights")

    def fused(h, w, b, y, m, wt):
        return jax.shard_map(
            lambda h, w, b, y, m, wt: jaxloss.vocab_parallel_fused_linear_cross_entropy(
                h,
                w,
                y,
                bias=b,
                where=m,
                weights=wt,
                axis_name="model",
                batch_axis_name="data",
                chunk_size=3,
                **options,
            ),
            mesh=mesh,
            in_specs=tuple(specs.get(k, P("data")) for k in names),
            out_specs=P(),
        )(h, w, b, y, m, wt)

    def materialized(h, w, b, y, m, wt):
        return jaxloss.softmax_cross_entropy(
            h @ w + b, y, where=m, weights=wt, reduction="mean", **options
        )

    results.update(
        compare("vocab_parallel_fused", fused, materialized, x, names, build, argnums=(0, 1, 2))
    )
    return results


# Contrastive losses with a ``batch_axis_name`` (another branch adds them): checked here
# as soon as jaxloss has them; tests/test_multiprocess.py asserts that none is left out.
CONTRASTIVE = {
    "clip_loss": {"temperature": 0.2},
    "siglip_loss": {"logit_scale": float(np.log(5.0)), "logit_bias": -2.0},
}


def check_contrastive(x):
    """Pairs sharded across the processes, more of them removed (``where``) on the second:
    plain jit, and shard_map with batch_axis_name; value and the gradients of both
    embeddings against the same loss on one device."""
    mesh = data_mesh()
    names = ("image", "text", "keep", "weights")
    build = lambda k, v: from_local_rows(mesh, v)  # noqa: E731
    results = {"contrastive": sorted(CONTRASTIVE)}
    for name in results["contrastive"]:
        fn = functools.partial(getattr(jaxloss, name), reduction="mean", **CONTRASTIVE[name])

        def loss(a, b, m, w, fn=fn, **more):
            return fn(a, b, where=m, weights=w, **more)

        in_shard_map = jax.shard_map(
            functools.partial(loss, batch_axis_name="batch"),
            mesh=mesh,
            in_specs=P("batch"),
            out_specs=P(),
        )
        for how, f in (("jit", loss), ("shard_map", in_shard_map)):
            results.update(compare(f"{name}[{how}]", f, loss, x, names, build, argnums=(0, 1)))
    return results


def _preference(hidden, labels, keep, ref_hidden, weights, weight, *, batch_axis_name=None):
    return jaxloss.fused_linear_preference_loss(
        hidden,
        weight,
        labels,
        where=keep,
        ignore_index=-100,
        reference_hidden=ref_hidden,
        reference_weight=weight,
        weights=weights,
        chunk_size=1,
        batch_axis_name=batch_axis_name,
    )


def check_preference(x):
    """fused_linear_preference_loss (DPO) of 8 pairs of 2-token sequences, one pair per
    device: on a mesh of explicit axes with the [16, 2, D] sequences sharded as given
    (the chosen ones on process 0, the rejected on process 1: the loss regroups them by
    pair across the processes), and in shard_map with batch_axis_name on sequences laid
    out device by device (each device's chosen, then its rejected sequence); value and the
    gradients of hidden and of the weight against the same loss on one device."""
    pairs = 8
    shaped = {
        "hidden": x["hidden"].reshape(2 * pairs, 2, D),
        "labels": x["labels"].reshape(2 * pairs, 2),
        "keep": x["keep"].reshape(2 * pairs, 2),
        "ref_hidden": x["image"].reshape(2 * pairs, 2, D),
        "weights": x["weights"][:pairs],
        "weight": x["weight"],
    }
    names = tuple(shaped)
    order = np.stack([np.arange(pairs), pairs + np.arange(pairs)], axis=1).reshape(-1)
    per_device = {k: v[order] if k not in ("weights", "weight") else v for k, v in shaped.items()}
    inverse = np.argsort(order)

    def from_per_device(h, y, m, rh, w, wt):  # the one-device loss of the same pairs
        return _preference(h[inverse], y[inverse], m[inverse], rh[inverse], w, wt)

    results = {}
    for how, values, reference in (
        ("jit", shaped, _preference),
        ("shard_map", per_device, from_per_device),
    ):
        kind = AxisType.Explicit if how == "jit" else AxisType.Auto
        mesh = data_mesh(kind)

        def build(k, v, mesh=mesh):
            return from_blocks(mesh, P() if k == "weight" else P("batch"), v)

        loss = _preference
        if how == "shard_map":
            loss = jax.shard_map(
                functools.partial(_preference, batch_axis_name="batch"),
                mesh=mesh,
                in_specs=(P("batch"),) * 5 + (P(),),
                out_specs=P(),
            )
        results.update(
            compare(f"preference[{how}]", loss, reference, values, names, build, argnums=(0, 5))
        )
    return results


def check_regularization(x):
    """A penalty (value and gradient) and optax chains of jaxloss transforms on parameters
    whose kernel is sharded across the processes, a few steps, against one device."""
    mesh = data_mesh()
    rng = np.random.default_rng(2)
    # Groups are the kernel's columns (group_axis=-1), each spread over all 8 devices, so a
    # group's norm needs both processes; the first column is small enough to be removed.
    kernel = rng.normal(size=(N, 4)) * np.array([0.1, 1.0, 1.0, 2.0])
    params = {"kernel": kernel, "bias": rng.normal(size=4)}
    grads = [{k: 0.1 * rng.normal(size=v.shape) for k, v in params.items()} for _ in range(3)]
    spec = {"kernel": P("batch"), "bias": P()}
    kernel_only = jaxloss.path_mask("kernel")
    optimizer = optax.chain(
        jaxloss.transforms.add_penalty_gradient(jaxloss.l2_penalty, 0.1),
        optax.sgd(0.5),
        jaxloss.transforms.proximal_group_lasso(0.5, 0.5, group_axis=-1, mask=kernel_only),
    )

    def penalty(p):
        group = jaxloss.group_lasso_penalty(p, group_axis=-1, mask=kernel_only)
        return jaxloss.elastic_net_penalty(p, l1_ratio=0.3) + group

    def train(p, gs):
        state = optimizer.init(p)
        for g in gs:
            updates, state = optimizer.update(g, state, p)
            p = optax.apply_updates(p, updates)
        return p

    penalty_and_grad, train = jax.jit(jax.value_and_grad(penalty)), jax.jit(train)
    results = {}
    for tag, dtype in DTYPES.items():
        p = jax.tree.map(lambda v, dtype=dtype: v.astype(dtype), params)
        gs = [jax.tree.map(lambda v, dtype=dtype: v.astype(dtype), g) for g in grads]

        def to_global(tree):
            return {k: from_blocks(mesh, spec[k], np.asarray(v)) for k, v in tree.items()}

        def exact(tree):
            return jax.tree.map(lambda v: jnp.asarray(v, np.float64), tree)

        got = penalty_and_grad(to_global(p))
        want = penalty_and_grad(exact(p))
        results[f"penalty[{tag}]"] = difference(got, want)
        got = train(to_global(p), [to_global(g) for g in gs])
        want = train(exact(p), [exact(g) for g in gs])
        results[f"transforms[{tag}]"] = difference(got, want)
        # Groups (columns) removed exactly: on one device, and in every shard held here.
        results[f"zero_groups_one_device[{tag}]"] = int(np.sum(~np.any(want["kernel"], 0)))
        held = np.stack([np.any(s.data, 0) for s in got["kernel"].addressable_shards])
        results[f"zero_groups[{tag}]"] = int(np.sum(~np.any(held, 0)))
    return results


def main():
    initialize()
    jax.config.update("jax_enable_x64", True)
    x = global_batch()
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "valid_tokens": int(x["keep"][my_rows()].sum()),
    }
    report.update(check_global_mean(x))
    report.update(check_fused(x))
    report.update(check_vocab_parallel(x))
    report.update(check_regularization(x))
    report.update(check_contrastive(x))
    report.update(check_preference(x))
    print(json.dumps(report), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
