"""Compact networks with the group lasso: proximal steps that remove whole hidden units.

The idea of CompactNets (Lobel, Vidal & Soto): penalize each hidden unit's weights as
one group, Ω(W) = Σ_g √|g| ‖w_g‖₂, so that training switches off whole units rather
than single weights. Here the groups are the *outgoing* weights of each hidden unit of a
Flax NNX MLP 64-H-H-10 on the digits (rows of the second and third kernels): a unit whose
row is exactly zero no longer affects the output and can be deleted. Exact zeros come
from the proximal step ``jaxloss.transforms.proximal_group_lasso`` placed after SGD:

    optax.chain(optax.sgd(η, momentum=0.9),
                jaxloss.transforms.proximal_group_lasso(α, η, group_axis=0, mask=...))

As α grows, fewer units survive; the table and the plot show the test accuracy against
the number of surviving units, next to dense networks of that width trained without the
penalty.

    python examples/compact_group_lasso.py [--quick] [--no-progress] [--out DIR]
"""

from __future__ import annotations

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxloss

NAME = "compact_group_lasso"
ALPHAS = [0.0, 3e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]
DENSE_WIDTHS = [4, 8, 16, 32]
LR = 0.05
# the outgoing weights of each hidden unit: rows of l2's and out's kernels
GROUPS = jaxloss.path_mask(r"(l2|out)/kernel$")


class MLP(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=1200, stratify=y, random_state=0
    )
    return jax.tree.map(jnp.asarray, (x_train, y_train, x_test, y_test))


def train(args, data, width, alphas, seeds, steps, desc):
    """One model per (α, seed) under vmap; returns surviving units and test accuracy."""
    x_train, y_train, x_test, y_test = data
    runs = [(a, s) for a in alphas for s in seeds]
    graphdef, params = _common.stack_models([MLP(width, nnx.Rngs(s)) for _, s in runs])
    alpha = jnp.asarray([a for a, _ in runs], jnp.float32)
    keys = jnp.stack([jax.random.key(100 + s) for _, s in runs])

    def make_tx(a):
        # α as a schedule (a function of the step count) so that it can be vmapped
        prox = jaxloss.transforms.proximal_group_lasso(
            lambda count: a, LR, group_axis=0, mask=GROUPS
        )
        return optax.chain(optax.sgd(LR, momentum=0.9), prox)

    def one_model_step(p, o, a, key, t):
        idx = jax.random.randint(jax.random.fold_in(key, t), (64,), 0, len(x_train))

        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x_train[idx])
            return jaxloss.softmax_cross_entropy(logits, y_train[idx], reduction="mean")

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = make_tx(a).update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    def step(state, t):
        p, o = state
        p, o, loss = jax.vmap(one_model_step, in_axes=(0, 0, 0, 0, None))(p, o, alpha, keys, t)
        return (p, o), loss

    opt_state = jax.vmap(lambda p, a: make_tx(a).init(p))(params, alpha)
    (params, _), _, _ = _common.train_loop(
        args, step, (params, opt_state), steps, desc=desc, chunk=steps // 10
    )

    @jax.jit
    def summarize(p):
        model = nnx.merge(graphdef, p)
        acc = jnp.mean(jnp.argmax(model(x_test), -1) == y_test)
        alive1 = jnp.sum(jnp.any(model.l2.kernel[...] != 0, axis=1))
        alive2 = jnp.sum(jnp.any(model.out.kernel[...] != 0, axis=1))
        return acc, alive1, alive2

    acc, alive1, alive2 = (np.asarray(v) for v in jax.vmap(summarize)(params))
    shape = (len(alphas), len(seeds))
    return acc.reshape(shape), alive1.reshape(shape), alive2.reshape(shape)


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    n_seeds, steps, width = (2, 100, 32) if args.quick else (3, 3000, 128)
    alphas = ALPHAS[::3] if args.quick else ALPHAS
    widths = DENSE_WIDTHS[:1] if args.quick else DENSE_WIDTHS
    seeds = list(range(n_seeds))
    data = load_data()

    acc, alive1, alive2 = train(args, data, width, alphas, seeds, steps, "group lasso sweep")
    dense = {w: train(args, data, w, [0.0], seeds, steps, f"dense width {w}") for w in widths}

    rows, numbers = [], {"group_lasso": [], "dense": []}
    for i, a in enumerate(alphas):
        units = alive1[i] + alive2[i]
        rows.append(
            [
                f"group lasso, α = {a:g}",
                _common.pm(alive1[i], 1),
                _common.pm(alive2[i], 1),
                _common.pm(units, 1),
                _common.pm(acc[i], 1, 100),
            ]
        )
        numbers["group_lasso"].append(
            {
                "alpha": a,
                "layer1_units": alive1[i].tolist(),
                "layer2_units": alive2[i].tolist(),
                "test_accuracy": acc[i].tolist(),
            }
        )
    for w, (d_acc, _, _) in dense.items():
        rows.append(
            [
                f"dense, no penalty, width {w}",
                str(w),
                str(w),
                str(2 * w),
                _common.pm(d_acc[0], 1, 100),
            ]
        )
        numbers["dense"].append({"width": w, "test_accuracy": d_acc[0].tolist()})
    table = _common.markdown_table(
        ["network", "units left, layer 1", "units left, layer 2", "total", "test accuracy (%)"],
        rows,
    )
    notes = (
        f"Mean ± std over {n_seeds} seeds. MLP 64-{width}-{width}-10 (ReLU) on 1200 training "
        f"and 597 test digits, SGD (η = {LR}, momentum 0.9, batch 64) followed by the group-"
        f"lasso proximal step on the outgoing weights of each hidden unit, {steps} steps. A unit "
        "is left when any of its outgoing weights is non-zero; the others are exactly zero "
        "and can be deleted without changing the output. The dense rows are networks of that "
        "width trained the same way with α = 0."
    )
    _common.write_results(
        args,
        table,
        settings={"seeds": n_seeds, "steps": steps, "width": width, "lr": LR, "alphas": alphas},
        numbers=numbers,
        notes=notes,
    )

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    units = alive1 + alive2
    axes[0].errorbar(
        units.mean(1),
        acc.mean(1),
        xerr=units.std(1),
        yerr=acc.std(1),
        marker="o",
        capsize=3,
        label=f"group lasso on a 2×{width} MLP",
    )
    for i, a in enumerate(alphas):
        if units[i].mean() > 0.9 * units[0].mean():
            continue  # the unpruned points overlap
        axes[0].annotate(
            f"α={a:g}",
            (units[i].mean(), acc[i].mean()),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, -10),
        )
    d_units = [2 * w for w in widths]
    d_acc = [dense[w][0][0] for w in widths]
    axes[0].errorbar(
        d_units,
        [a.mean() for a in d_acc],
        yerr=[a.std() for a in d_acc],
        marker="s",
        capsize=3,
        label="dense, trained at that width",
    )
    axes[0].set(xscale="log", xlabel="hidden units left (both layers)", ylabel="test accuracy")
    axes[0].set_title("accuracy against surviving units")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    x = np.asarray(alphas, np.float64)
    x[0] = x[1] / 3  # α = 0 on the log axis
    axes[1].errorbar(x, alive1.mean(1), yerr=alive1.std(1), marker="o", capsize=3, label="layer 1")
    axes[1].errorbar(x, alive2.mean(1), yerr=alive2.std(1), marker="o", capsize=3, label="layer 2")
    axes[1].set(xscale="log", xlabel="α (leftmost point: α = 0)", ylabel="units left")
    axes[1].set_title("surviving units against α")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    _common.save_figure(args, fig, "compact_group_lasso.png")


if __name__ == "__main__":
    main()
