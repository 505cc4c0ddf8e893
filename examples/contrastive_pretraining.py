"""Contrastive pretraining of an encoder pair with CLIP's and SigLIP's losses, on 4 devices.

Each 8×8 digit is cut into two views, its top half and its bottom half (32 pixels each).
Two small Flax NNX encoders map the views to 32-dimensional embeddings, trained so that
the two halves of the same image match: once with ``clip_loss`` (softmax over the batch,
learnable temperature) and once with ``siglip_loss`` (a sigmoid per pair, learnable
temperature and bias). Training is data-parallel over 4 host CPU devices with
``jax.shard_map``: each device embeds its quarter of the batch, and the loss
(``batch_axis_name="batch"``) uses every example on every device as a negative, CLIP by
gathering the embeddings, SigLIP by passing them around the ring of devices.

Reported: the training-loss curves, the top-1 retrieval accuracy on held-out digits
(for each top half, is its own bottom half the most similar among all test bottom
halves, and the other way round), and the per-device memory (XLA's accounting) of the
two losses' forward + backward at the training batch and at a 16 times larger one.

    python examples/contrastive_pretraining.py [--quick] [--no-progress] [--out DIR]
"""

from __future__ import annotations

import os

# Four host CPU devices; the count is fixed when JAX starts, so set it before the import.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import jaxloss  # noqa: E402

NAME = "contrastive_pretraining"
DEVICES = 4
EMBED = 32
LOSSES = ("clip", "siglip")


class Encoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(32, 128, rngs=rngs)
        self.out = nnx.Linear(128, EMBED, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.gelu(self.hidden(x)))


class EncoderPair(nnx.Module):
    """Encoders for the top and the bottom half, and the loss's learnable scalars."""

    def __init__(self, loss: str, rngs: nnx.Rngs):
        self.top, self.bottom = Encoder(rngs), Encoder(rngs)
        # The papers' starting points: t = 1/0.07 for CLIP; t = 10, b = −10 for SigLIP.
        scale = np.log(1 / 0.07) if loss == "clip" else np.log(10.0)
        self.logit_scale = nnx.Param(jnp.asarray(scale, jnp.float32))
        self.logit_bias = nnx.Param(jnp.asarray(-10.0, jnp.float32))

    def __call__(self, top, bottom):
        return self.top(top), self.bottom(bottom)


def contrastive(loss: str, ex, ey, scale, bias, **kw):
    if loss == "clip":
        return jaxloss.clip_loss(ex, ey, logit_scale=scale, **kw)
    return jaxloss.siglip_loss(ex, ey, logit_scale=scale, logit_bias=bias, **kw)


def data(seed: int):
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    top = images[:, :4, :].reshape(len(images), 32)
    bottom = images[:, 4:, :].reshape(len(images), 32)
    return train_test_split(top, bottom, test_size=0.25, random_state=seed)


def retrieval(model, top, bottom):
    """Top-1 accuracy of matching each half to its own other half, both directions."""
    ex, ey = model(top, bottom)
    ex = ex / jnp.linalg.norm(ex, axis=-1, keepdims=True)
    ey = ey / jnp.linalg.norm(ey, axis=-1, keepdims=True)
    s = ex @ ey.T
    own = jnp.arange(len(s))
    return 0.5 * (jnp.mean(jnp.argmax(s, 1) == own) + jnp.mean(jnp.argmax(s, 0) == own))


def train(args, loss, seed, mesh, steps, batch):
    top_tr, top_te, bot_tr, bot_te = data(seed)
    top_tr, bot_tr = jnp.asarray(top_tr), jnp.asarray(bot_tr)
    model = EncoderPair(loss, nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, steps))

    def objective(params, top, bottom):
        def local(params, top, bottom):  # on each device: its quarter of the batch
            m = nnx.merge(graphdef, params)
            ex, ey = m(top, bottom)
            return contrastive(
                loss,
                ex,
                ey,
                m.logit_scale[...],
                m.logit_bias[...],
                batch_axis_name="batch",
                reduction="mean",
            )

        rows = P("batch")
        return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows), out_specs=P())(
            params, top, bottom
        )

    def step(state, t):
        params, opt_state = state
        idx = jax.random.choice(
            jax.random.fold_in(jax.random.key(seed), t), len(top_tr), (batch,), replace=False
        )
        value, grads = jax.value_and_grad(objective)(params, top_tr[idx], bot_tr[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    evaluate = jax.jit(lambda p: retrieval(nnx.merge(graphdef, p), top_te, bot_te))
    state = (params, optimizer.init(params))
    chunk = min(steps, 100)
    (params, _), losses, evals = _common.train_loop(
        args,
        step,
        state,
        steps,
        desc=f"{loss} seed {seed}",
        chunk=chunk,
        evaluate=lambda s: float(evaluate(s[0])),
    )
    return np.asarray(losses), evals, len(top_te)


def memory(mesh, batch, dim):
    """Per-device temp memory (MiB) of forward + backward of each loss in shard_map."""
    rng = np.random.default_rng(0)
    ex = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    ey = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    out = {}
    for loss in LOSSES:
        local = lambda ex, ey, loss=loss: contrastive(  # noqa: E731
            loss, ex, ey, 1.0, -5.0, batch_axis_name="batch", reduction="mean"
        )
        f = jax.shard_map(local, mesh=mesh, in_specs=(P("batch"), P("batch")), out_specs=P())
        program = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(ex, ey).compile()
        out[loss] = program.memory_analysis().temp_size_in_bytes / 2**20
    return out


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    steps, seeds, batch = (100, [0], 128) if args.quick else (1500, [0, 1], 256)
    mesh = jax.make_mesh((DEVICES,), ("batch",), (AxisType.Auto,))
    if jax.device_count() != DEVICES:
        raise RuntimeError(
            f"expected {DEVICES} host devices, got {jax.device_count()}: JAX was imported "
            "before this script set XLA_FLAGS"
        )

    runs = {loss: [train(args, loss, s, mesh, steps, batch) for s in seeds] for loss in LOSSES}
    n_test = runs["clip"][0][2]
    big = 16 * batch
    mem = {b: memory(mesh, b, EMBED) for b in (batch, big)}

    rows, numbers = [], {}
    for loss in LOSSES:
        final = [r[1][-1][1] for r in runs[loss]]
        best = [max(a for _, a in r[1]) for r in runs[loss]]
        last_loss = [float(np.mean(r[0][-50:])) for r in runs[loss]]
        numbers[loss] = {
            "final_top1": final,
            "best_top1": best,
            "final_train_loss": last_loss,
            "temp_MiB": {str(b): mem[b][loss] for b in mem},
        }
        rows.append(
            [
                f"`{loss}_loss`",
                _common.pm(np.array(final) * 100, 1),
                _common.pm(np.array(best) * 100, 1),
                _common.pm(last_loss, 3),
                f"{mem[batch][loss]:.2f}",
                f"{mem[big][loss]:.2f}",
            ]
        )
    table = _common.markdown_table(
        [
            "loss",
            "test top-1 retrieval (%)",
            "best during training (%)",
            "final training loss",
            f"per-device temp, B = {batch} (MiB)",
            f"B = {big} (MiB)",
        ],
        rows,
    )
    notes = (
        f"Encoders 32-128-{EMBED} (GELU) for the top and bottom halves of the 8×8 digits; "
        f"{steps} Adam steps (cosine decay from 2·10⁻³) on batches of {batch} pairs split "
        f"over {DEVICES} host CPU devices with `shard_map`; retrieval among the {n_test} "
        "held-out digits (chance: "
        f"{100 / n_test:.2f} %), averaged over both directions; mean ± std over "
        f"{len(seeds)} seed(s). Memory: XLA's per-device temp memory of forward + backward "
        f"of each loss on [B, {EMBED}] embeddings (CLIP gathers all embeddings, SigLIP "
        "passes chunks around the ring)."
    )
    _common.write_results(
        args,
        table,
        settings={"steps": steps, "seeds": seeds, "batch": batch, "devices": DEVICES},
        numbers=numbers,
        notes=notes,
    )

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = {"clip": "C0", "siglip": "C3"}
    for k, loss in enumerate(LOSSES):
        for i, (curve, evals, _) in enumerate(runs[loss]):
            window = min(25, len(curve))
            smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
            axes[k].plot(smooth, color=colors[loss], alpha=0.9, label=f"seed {seeds[i]}")
            t, acc = zip(*evals, strict=True)
            axes[2].plot(
                t,
                100 * np.array(acc),
                color=colors[loss],
                marker="o",
                markersize=3,
                label=f"{loss}_loss" if i == 0 else None,
            )
        axes[k].set(title=f"{loss}_loss (training, moving average)", xlabel="step", ylabel="loss")
        axes[k].legend(fontsize=8)
    axes[2].axhline(100 / n_test, color="gray", lw=0.8, ls="--", label="chance")
    axes[2].set(title="test top-1 retrieval", xlabel="step", ylabel="accuracy (%)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    _common.save_figure(args, fig, "contrastive_pretraining.png")


if __name__ == "__main__":
    main()
