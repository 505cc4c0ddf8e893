"""SigLIP across devices: the ring (``ppermute``) against an all-gather version, per-device memory.

Both compute the same loss and gradients inside ``jax.shard_map`` with the batch of B
pairs split over S host CPU devices (b = B/S per device), forward + backward
(``jax.value_and_grad`` of the global mean with respect to x, y, the logit scale and
the bias):

- ring: ``jaxloss.siglip_loss(..., batch_axis_name=...)``, each device passing its chunk
  of y around the ring, one [b, b] block at a time, and recomputing the blocks in the
  backward pass;
- all-gather: each device gathers all of y ([B, D]) and computes its [b, B] block of
  logits at once (plain autodiff), as a straightforward data-parallel version would.

Per-device memory is XLA's accounting of the compiled per-device program,
``jax.jit(f).lower(...).compile().memory_analysis()``; nothing is run, so the numbers do
not depend on the machine's load. ``clip_loss`` (which gathers) is listed for reference.

    python benchmarks/contrastive_memory.py            # B = 4096, D = 256, S = 8
    python benchmarks/contrastive_memory.py --small    # a quick smoke run

Writes a Markdown table to ``benchmarks/results/contrastive_memory_cpu.md``.
"""

from __future__ import annotations

import os

# The host CPU devices are fixed when JAX starts: set the count before importing it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxloss  # noqa: E402

RESULTS = Path(__file__).parent / "results"
AXIS = "batch"


def ring(x, y, scale, bias):
    return jaxloss.siglip_loss(
        x, y, logit_scale=scale, logit_bias=bias, batch_axis_name=AXIS, reduction="mean"
    )


def all_gather(x, y, scale, bias):
    """The SigLIP loss with all of y gathered on every device: a [b, B] block of logits."""
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    y = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
    y_all = lax.all_gather(y, AXIS, tiled=True)
    b = x.shape[0]
    u = jnp.exp(scale) * (x @ y_all.T) + bias
    own = lax.axis_index(AXIS) * b + jnp.arange(b)
    z = jnp.where(jnp.arange(y_all.shape[0]) == own[:, None], 1.0, -1.0)
    total = lax.psum(jnp.sum(jax.nn.softplus(-z * u)), AXIS)
    return total / (b * lax.axis_size(AXIS))


def clip(x, y, scale, bias):
    del bias
    return jaxloss.clip_loss(x, y, logit_scale=scale, batch_axis_name=AXIS, reduction="mean")


def compiled(loss, mesh, args):
    f = jax.shard_map(loss, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(), P()), out_specs=P())
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))).lower(*args).compile()


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="B = 256, D = 32")
    options = parser.parse_args()
    batch, dim = (256, 32) if options.small else (4096, 256)
    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), (AXIS,))
    rng = np.random.default_rng(0)
    put = lambda a, spec: jax.device_put(jnp.asarray(a, jnp.float32), NamedSharding(mesh, spec))  # noqa: E731
    args = (
        put(rng.normal(size=(batch, dim)), P(AXIS)),
        put(rng.normal(size=(batch, dim)), P(AXIS)),
        put(np.log(10.0), P()),
        put(-10.0, P()),
    )
    rows = []
    programs = {}
    for name, loss in (("siglip ring", ring), ("siglip all-gather", all_gather), ("clip", clip)):
        program = compiled(loss, mesh, args)
        programs[name] = program
        stats = program.memory_analysis()
        rows.append((name, stats.temp_size_in_bytes, stats.argument_size_in_bytes))
        print(f"{name:18s} temp {mib(stats.temp_size_in_bytes)}", flush=True)
    temp = {name: t for name, t, _ in rows}
    ratio = temp["siglip ring"] / temp["siglip all-gather"]
    # The two programs compute the same thing: check it on these inputs.
    (v_ring, g_ring), (v_gather, g_gather) = (programs[k](*args) for k in temp if "siglip" in k)
    err = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves((v_ring, g_ring)), jax.tree.leaves((v_gather, g_gather)), strict=True
        )
    )
    b = batch // devices
    lines = [
        f"Forward + backward of the mean SigLIP loss inside `shard_map`, B = {batch} pairs "
        f"over {devices} host CPU devices (b = {b} per device), D = {dim}, float32, jax "
        f"{jax.__version__}, {platform.machine()}. Per-device temp memory is XLA's "
        "`memory_analysis().temp_size_in_bytes` of the compiled per-device program "
        "(independent of the machine's load).",
        "",
        "| implementation | per-device temp | per-device arguments | temp / all-gather |",
        "|---|---:|---:|---:|",
    ]
    for name, t, a in rows:
        lines.append(f"| {name} | {mib(t)} | {mib(a)} | {t / temp['siglip all-gather']:.3f} |")
    lines += [
        "",
        f"Ring / all-gather temp memory: **{ratio:.3f}** (1/{1 / ratio:.1f}). "
        f"For scale: a [b, B] block of float32 logits is {mib(b * batch * 4)}, all of y "
        f"[B, D] {mib(batch * dim * 4)}. Ring against all-gather, max relative difference "
        f"of the loss and gradients: {err:.1e}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not options.small:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "contrastive_memory_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
