"""Contrastive losses across devices: checks on 8 host CPU devices, run by
tests/test_contrastive.py in a subprocess (see tests/host_devices.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_contrastive.py

Inside ``shard_map`` on a (data=2, model=4) mesh, with the batch split over both axes
(8 shards) or over "data" only (replicated over "model"), `clip_loss` and `siglip_loss`
and their gradients in x, y, the logit scale and the bias must equal the single-device
computation on the whole batch, in float64 and float32, masked and weighted. Under plain
``jit`` with the batch sharded by ``NamedSharding`` the mean is the global one. The
script prints one JSON object: per check, the largest relative difference, and for the
ring whether its compiled program holds any [B, D] or [b, B] array.
"""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxloss
from tests.host_devices import difference

B, D = 32, 6  # 4 pairs per device on 8 devices, 16 on 2


def _inputs(dtype):
    rng = np.random.default_rng(0)
    keep = rng.random(B) < 0.8
    keep[:2] = False
    return {
        "x": jnp.asarray(rng.normal(size=(B, D)), dtype),
        "y": jnp.asarray(rng.normal(size=(B, D)), dtype),
        "scale": jnp.asarray(np.log(5.0), dtype),
        "bias": jnp.asarray(-2.0, dtype),
        "where": jnp.asarray(keep),
        "weights": jnp.asarray(rng.random(B) + 0.5, dtype),
    }


def _loss(name, x, y, scale, bias, where, weights, **kw):
    if name == "clip_loss":
        return jaxloss.clip_loss(x, y, logit_scale=scale, where=where, weights=weights, **kw)
    return jaxloss.siglip_loss(
        x, y, logit_scale=scale, logit_bias=bias, where=where, weights=weights, **kw
    )


def _specs(axes):
    return (P(axes), P(axes), P(), P(), P(axes), P(axes))


def _put(mesh, axes, args):
    return [
        jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, _specs(axes), strict=True)
    ]


def _sharded(mesh, name, axes, reduction):
    local = functools.partial(_loss, name, batch_axis_name=axes, reduction=reduction)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=_specs(axes),
        out_specs=P(axes) if reduction == "none" else P(),
    )


def _value_and_grad(f, cotangent):
    """``(f(*a), grad of Σ f(*a)·cotangent in x, y, scale, bias)``, traced in the caller's
    jit (the value and the gradient in one program, not one compilation each)."""

    def value_and_grad(*args):
        scalar = lambda *a: jnp.sum(f(*a) * cotangent)  # noqa: E731
        return f(*args), jax.grad(scalar, argnums=(0, 1, 2, 3))(*args)

    return value_and_grad


def _cotangent(reduction):
    return np.linspace(0.5, 1.5, B) if reduction == "none" else 1.0


# (batch axes, reduction) per dtype: every combination in float64, the main one in float32.
BOTH, DATA = ("data", "model"), "data"
COMBINATIONS = {
    "float64": [(BOTH, "none"), (BOTH, "mean"), (DATA, "none"), (DATA, "mean")],
    "float32": [(BOTH, "mean")],
}
NAMES = ("clip_loss", "siglip_loss")


def check_shard_map(mesh):
    """Per dtype, two compilations: every single-device result (each loss, each
    reduction) in one jit on the whole unsharded batch, and every sharded one (each
    loss, batch axes and reduction) in another, the inputs placed per batch axes."""
    results = {}
    for dtype in (jnp.float64, jnp.float32):
        inputs = _inputs(dtype)
        args = [inputs[k] for k in ("x", "y", "scale", "bias", "where", "weights")]
        combinations = COMBINATIONS[jnp.dtype(dtype).name]
        reductions = sorted({reduction for _, reduction in combinations})
        axes_list = list(dict.fromkeys(axes for axes, _ in combinations))

        @jax.jit
        def single_device(args, reductions=reductions):
            return [
                [
                    _value_and_grad(
                        functools.partial(_loss, name, reduction=reduction),
                        _cotangent(reduction),
                    )(*args)
                    for reduction in reductions
                ]
                for name in NAMES
            ]

        @jax.jit
        def sharded(args_per_axes, combinations=combinations, axes_list=axes_list):
            return [
                [
                    _value_and_grad(_sharded(mesh, name, axes, reduction), _cotangent(reduction))(
                        *args_per_axes[axes_list.index(axes)]
                    )
                    for axes, reduction in combinations
                ]
                for name in NAMES
            ]

        expected = single_device(args)
        got = sharded([_put(mesh, axes, args) for axes in axes_list])
        for i, name in enumerate(NAMES):
            for j, (axes, reduction) in enumerate(combinations):
                key = f"{name}[{jnp.dtype(dtype).name},{'+'.join(np.atleast_1d(axes))},"
                results[f"{key}{reduction}]"] = difference(
                    got[i][j], expected[i][reductions.index(reduction)]
                )
    return results


def check_ring_memory(mesh):
    """The compiled value-and-gradient program of the ring holds no [B, D] y and no
    [b, B] block: only [b, D] chunks and [b, b] blocks (b = B/8 = 4)."""
    inputs = _inputs(jnp.float32)
    args = [inputs[k] for k in ("x", "y", "scale", "bias", "where", "weights")]
    axes = ("data", "model")
    f = jax.jit(jax.value_and_grad(_sharded(mesh, "siglip_loss", axes, "mean"), (0, 1, 2, 3)))
    hlo = f.lower(*_put(mesh, axes, args)).compile().as_text()
    b = B // 8
    shapes = set(re.findall(r"f32\[([0-9,]+)\]", hlo))
    full = {f"{B},{D}", f"{b},{B}", f"{B},{b}", f"{B},{B}"}
    return {
        "ring_shapes_seen": sorted(shapes),
        "ring_holds_full_y_or_b_by_B_block": bool(shapes & full),
        "ring_has_collective_permute": "collective-permute" in hlo,
        "ring_has_all_gather": "all-gather" in hlo,
    }


def check_generic_recipe(mesh):
    """docs/scaling.md's recipe for a per-example loss inside ``shard_map`` (each device's
    ``reduction="sum"``, then psum of the sums over psum of the weights) applied to the
    contrastive losses without ``batch_axis_name``: each device then contrasts its pairs
    with its own 4 only, so the result is not the global mean. The relative error against
    the single-device mean (float64), for the test to show the recipe does not apply."""
    inputs = _inputs(jnp.float64)
    args = [inputs[k] for k in ("x", "y", "scale", "bias", "where", "weights")]
    axes = ("data", "model")

    def recipe(name):
        def local(x, y, scale, bias, where, weights):
            total = _loss(name, x, y, scale, bias, where, weights, reduction="sum")
            count = jnp.sum(jnp.where(where, weights, 0.0))
            return jax.lax.psum(total, axes) / jax.lax.psum(count, axes)

        return jax.shard_map(local, mesh=mesh, in_specs=_specs(axes), out_specs=P())

    @jax.jit
    def both(args, sharded_args):
        return [
            (recipe(name)(*sharded_args), _loss(name, *args, reduction="mean")) for name in NAMES
        ]

    out = both(args, _put(mesh, axes, args))
    return {
        f"generic_recipe_relative_error[{name}]": float(abs(got - want) / abs(want))
        for name, (got, want) in zip(NAMES, out, strict=True)
    }


def check_plain_jit():
    """The batch sharded over 8 devices by NamedSharding, plain jit: the global mean, on
    a mesh of explicit axes (``jax.make_mesh``'s default) and of automatic ones; also
    ntxent_loss, which gathers the batch. The three losses' values and gradients in one
    jitted function, compiled once for the single-device inputs and once per mesh."""
    inputs = _inputs(jnp.float64)
    keys = ("x", "y", "scale", "bias", "where", "weights")
    specs = (P("batch"), P("batch"), P(), P(), P("batch"), P("batch"))
    single = [jax.device_put(inputs[k], jax.devices()[0]) for k in keys]
    labels = jnp.arange(B) // 2  # pairs of views, for ntxent_loss
    names = ("clip_loss", "siglip_loss", "ntxent_loss")

    def ntxent(e, m, w):
        return jaxloss.ntxent_loss(e, labels, where=m, weights=w, temperature=0.3, reduction="mean")

    @jax.jit
    def all_losses(x, y, scale, bias, where, weights):
        out = [
            jax.value_and_grad(functools.partial(_loss, name, reduction="mean"), (0, 1, 2, 3))(
                x, y, scale, bias, where, weights
            )
            for name in names[:2]
        ]
        return [*out, jax.value_and_grad(ntxent)(x, where, weights)]

    expected = all_losses(*single)
    results = {}
    for kind in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("batch",), (kind,))
        sharded = [
            jax.device_put(inputs[k], NamedSharding(mesh, s))
            for k, s in zip(keys, specs, strict=True)
        ]
        got = all_losses(*sharded)
        for name, g, e in zip(names, got, expected, strict=True):
            results[f"plain_jit[{kind.name},{name}]"] = difference(g, e)
    return results


def main():
    jax.config.update("jax_enable_x64", True)
    report = {"device_count": jax.device_count()}
    if jax.device_count() == 8:
        mesh = jax.make_mesh((2, 4), ("data", "model"), (AxisType.Explicit,) * 2)
        report.update(check_shard_map(mesh))
        report.update(check_ring_memory(mesh))
        report.update(check_generic_recipe(mesh))
        report.update(check_plain_jit())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
