"""Weight decay in practice: the L2 penalty, its gradient transform, and decoupled AdamW.

Part 1, the derivation checked numerically. One SGD step on ℒ + (α/2)‖W‖² is

    W ← W − η(∇ℒ + αW) = (1 − ηα) W − η∇ℒ,

so four ways of training the same MLP from the same start on the same minibatches
must give the same weights: SGD on ``jaxloss.penalized(loss, alpha=α)``; SGD after
``jaxloss.transforms.add_penalty_gradient(jaxloss.l2_penalty, α)``; SGD after optax's
``add_decayed_weights(α)``; and the update (1 − ηα)W − η∇ℒ written by hand. With Adam
the coupled penalty and optax's decoupled ``adamw`` are different algorithms, and the
same check shows how far apart they end up.

Part 2, the effect of α. A wide MLP trained on 150 of the digits overfits. For a sweep
of α, trained with SGD on the penalized loss and with AdamW, the table reports the
final weight norm ‖W‖ (kernels only; biases are never penalized here) and the test
accuracy, mean ± std over seeds.

    python examples/weight_decay.py [--quick] [--no-progress] [--out DIR]
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

NAME = "weight_decay"
SGD_ALPHAS = [0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
ADAM_LR = 1e-3
ADAMW_DECAYS = [0.0, 0.03, 0.1, 0.3, 1.0, 3.0]


class MLP(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def load_data(n_train):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=n_train, stratify=y, random_state=0
    )
    return jax.tree.map(jnp.asarray, (x_train, y_train, x_test, y_test))


def kernels_only(params):
    """True for the weight matrices, False for the biases: optax's form of the mask."""
    return jax.tree.map(lambda w: w.ndim >= 2, params)


def kernel_norm(params):
    """‖W‖ over the kernels: l2_penalty is ½‖W‖²."""
    return jnp.sqrt(2 * jaxloss.l2_penalty(params, mask=jaxloss.weight_matrix_mask))


def equivalence(args, data, width, steps, lr, alpha):
    """Part 1: max |ΔW| between the four SGD formulations and between Adam+L2 and AdamW."""
    x_train, y_train, *_ = data
    x_train = x_train.astype(jnp.float64)  # float64 so that rounding cannot hide a difference
    graphdef, params = nnx.split(MLP(width, nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(lambda w: w.astype(jnp.float64), params)
    mask = kernels_only(params)

    def data_loss(p, idx):
        logits = nnx.merge(graphdef, p)(x_train[idx])
        return jaxloss.softmax_cross_entropy(logits, y_train[idx], reduction="mean")

    kernels = jaxloss.weight_matrix_mask  # penalize the kernels, not the biases
    objectives = {
        "penalized": jaxloss.penalized(data_loss, alpha=alpha, mask=kernels),
        "plain": data_loss,
    }
    methods = {
        "SGD on penalized(loss, α)": ("penalized", optax.sgd(lr)),
        "add_penalty_gradient + SGD": (
            "plain",
            optax.chain(
                jaxloss.transforms.add_penalty_gradient(jaxloss.l2_penalty, alpha, mask=kernels),
                optax.sgd(lr),
            ),
        ),
        "add_decayed_weights + SGD (optax)": (
            "plain",
            optax.chain(optax.add_decayed_weights(alpha, mask=mask), optax.sgd(lr)),
        ),
        "(1 − ηα)W − η∇ℒ by hand": ("plain", None),
        "Adam on penalized(loss, α)": ("penalized", optax.adam(ADAM_LR)),
        "AdamW (decoupled, optax)": (
            "plain",
            optax.adamw(ADAM_LR, weight_decay=alpha, mask=mask),
        ),
    }
    batches = jax.random.randint(jax.random.key(0), (steps, 64), 0, len(x_train))
    final = {}
    for name, (objective, tx) in methods.items():
        loss_fn = objectives[objective]

        def step(state, idx, loss_fn=loss_fn, tx=tx):
            p, o = state
            grads = jax.grad(loss_fn)(p, idx)
            if tx is None:
                shrink = jax.tree.map(lambda m: 1.0 - lr * alpha if m else 1.0, mask)
                p = jax.tree.map(lambda w, g, s: s * w - lr * g, p, grads, shrink)
                return (p, o), None
            updates, o = tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), None

        state = (params, tx.init(params) if tx is not None else ())
        (p, _), _ = jax.jit(lambda s, b, step=step: jax.lax.scan(step, s, b))(state, batches)
        final[name] = p

    def max_diff(a, b):
        return float(max(jax.tree.leaves(jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b))))

    names = list(methods)
    reference = final[names[0]]
    rows = []
    for name in names[1:4]:
        rows.append([f"{names[0]} vs {name}", f"{max_diff(reference, final[name]):.1e}"])
    rows.append([f"{names[4]} vs {names[5]}", f"{max_diff(final[names[4]], final[names[5]]):.1e}"])
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(reference))
    return rows, scale


def sweep(args, data, method, values, seeds, width, steps, lr):
    """Part 2: train one model per (α, seed) under vmap; final kernel norm and test accuracy."""
    x_train, y_train, x_test, y_test = data
    runs = [(a, s) for a in values for s in seeds]
    graphdef, params = _common.stack_models([MLP(width, nnx.Rngs(s)) for _, s in runs])
    alphas = jnp.asarray([a for a, _ in runs], jnp.float32)
    mask = kernels_only(jax.tree.map(lambda x: x[0], params))

    def data_loss(p):
        logits = nnx.merge(graphdef, p)(x_train)
        return jaxloss.softmax_cross_entropy(logits, y_train, reduction="mean")

    def make_tx(alpha):
        if method == "sgd":
            return optax.sgd(lr, momentum=0.9)
        return optax.adamw(lr, weight_decay=alpha, mask=mask)

    def one_model_step(p, o, alpha):
        if method == "sgd":
            objective = jaxloss.penalized(data_loss, alpha=alpha, mask=jaxloss.weight_matrix_mask)
        else:
            objective = data_loss
        loss, grads = jax.value_and_grad(objective)(p)
        updates, o = make_tx(alpha).update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    def step(state, t):
        p, o = state
        p, o, loss = jax.vmap(one_model_step)(p, o, alphas)
        return (p, o), loss

    opt_state = jax.vmap(lambda p, a: make_tx(a).init(p))(params, alphas)

    @jax.jit
    def evaluate(state):
        def one(p):
            model = nnx.merge(graphdef, p)
            logits = model(x_test)
            acc = jnp.mean(jnp.argmax(logits, -1) == y_test)
            train_acc = jnp.mean(jnp.argmax(model(x_train), -1) == y_train)
            test_ce = jaxloss.softmax_cross_entropy(logits, y_test, reduction="mean")
            return acc, train_acc, kernel_norm(p), test_ce

        return jax.vmap(one)(state[0])

    label = "SGD + L2 penalty" if method == "sgd" else "AdamW"
    state, _, evals = _common.train_loop(
        args, step, (params, opt_state), steps, desc=label, chunk=steps // 10, evaluate=evaluate
    )
    shape = (len(values), len(seeds))
    test_acc, train_acc, norm, test_ce = (np.asarray(v).reshape(shape) for v in evals[-1][1])
    return {
        "test_acc": test_acc,
        "train_acc": train_acc,
        "norm": norm,
        "test_ce": test_ce,
    }


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    quick = args.quick
    n_seeds, steps, width = (2, 100, 64) if quick else (3, 1500, 128)
    data = load_data(150)
    seeds = list(range(n_seeds))

    with jax.enable_x64(True):
        eq_rows, scale = equivalence(args, data, 64, 50 if quick else 500, lr=0.1, alpha=1e-2)

    sgd_alphas = SGD_ALPHAS[::3] if quick else SGD_ALPHAS
    adamw_decays = ADAMW_DECAYS[::3] if quick else ADAMW_DECAYS
    results = {
        "SGD + L2 penalty": (
            sgd_alphas,
            sweep(args, data, "sgd", sgd_alphas, seeds, width, steps, 0.05),
        ),
        "AdamW": (
            adamw_decays,
            sweep(args, data, "adamw", adamw_decays, seeds, width, steps, 1e-3),
        ),
    }

    sweep_rows, numbers = [], {}
    for method, (values, r) in results.items():
        for i, a in enumerate(values):
            sweep_rows.append(
                [
                    method,
                    f"{a:g}",
                    _common.pm(r["norm"][i], 2),
                    _common.pm(r["train_acc"][i], 1, 100),
                    _common.pm(r["test_acc"][i], 1, 100),
                    _common.pm(r["test_ce"][i], 3),
                ]
            )
        numbers[method] = {
            "alpha": values,
            "kernel_norm": r["norm"].tolist(),
            "train_accuracy": r["train_acc"].tolist(),
            "test_accuracy": r["test_acc"].tolist(),
            "test_cross_entropy": r["test_ce"].tolist(),
        }
    eq_table = _common.markdown_table(
        ["same start, same minibatches", "largest difference in a weight"], eq_rows
    )
    table = _common.markdown_table(
        [
            "trained with",
            "α (AdamW: weight_decay)",
            "‖W‖ (kernels)",
            "train acc (%)",
            "test acc (%)",
            "test cross-entropy",
        ],
        sweep_rows,
    )
    notes = (
        f"{eq_table}\n\n"
        f"Part 1: MLP 64-64-64-10, η = 0.1 (Adam: 0.001), α = 0.01, "
        f"{50 if quick else 500} minibatch steps in float64; the largest weight is "
        f"{scale:.2f}, so the first three differences are "
        "rounding, while Adam with an L2 penalty and AdamW are different algorithms. "
        f"Part 2: MLP 64-{width}-{width}-10 on 150 training and 1647 test digits, "
        f"{steps} full-batch steps, SGD (η = 0.05, momentum 0.9) on `penalized(loss, α)` "
        f"and AdamW (η = 0.001); mean ± std over {n_seeds} seeds."
    )
    numbers["equivalence_max_abs_diff"] = {r[0]: float(r[1]) for r in eq_rows}
    _common.write_results(
        args,
        table,
        settings={"seeds": n_seeds, "steps": steps, "width": width, "n_train": 150},
        numbers=numbers,
        notes=notes,
    )

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for color, (method, (values, r)) in zip(["C0", "C1"], results.items(), strict=True):
        x = np.asarray(values, np.float64)
        x[0] = x[1] / 10  # show α = 0 on the log axis, labelled below
        axes[0].errorbar(
            x,
            r["norm"].mean(1),
            yerr=r["norm"].std(1),
            marker="o",
            color=color,
            capsize=3,
            label=method,
        )
        axes[1].errorbar(
            x,
            r["test_acc"].mean(1),
            yerr=r["test_acc"].std(1),
            marker="o",
            color=color,
            capsize=3,
            label=method,
        )
        axes[2].errorbar(
            x,
            r["test_ce"].mean(1),
            yerr=r["test_ce"].std(1),
            marker="o",
            color=color,
            capsize=3,
            label=method,
        )
    axes[0].set(xscale="log", xlabel="α (leftmost point: α = 0)", ylabel="‖W‖ of the kernels")
    axes[0].set_title("weight norm after training")
    axes[1].set(xscale="log", xlabel="α (leftmost point: α = 0)", ylabel="test accuracy")
    axes[1].set_title("test accuracy after training")
    axes[2].set(xscale="log", xlabel="α (leftmost point: α = 0)", ylabel="test cross-entropy")
    axes[2].set_title("test cross-entropy after training")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _common.save_figure(args, fig, "weight_decay.png")


if __name__ == "__main__":
    main()
