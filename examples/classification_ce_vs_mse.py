"""Softmax cross-entropy against squared error on the softmax outputs, on handwritten digits.

The claim under test: with softmax outputs, cross-entropy trains faster and generalizes
better than squared error. Both losses train the same Flax NNX MLP on scikit-learn's
bundled 8×8 digits (no download) with the same optimizer, the same learning-rate sweep,
the same step budget, minibatches and seeds:

- cross-entropy: ``jaxloss.softmax_cross_entropy(logits, labels)``;
- squared error: ``jaxloss.squared_error(softmax(logits), one_hot(labels))`` summed over
  the classes.

For each loss the learning rate is chosen by validation accuracy at the end of training
(the test set is not used for the choice). Reported, mean ± std over seeds at the chosen
learning rate: steps until the validation accuracy first reaches 95 % and 97 %
(training speed), final test accuracy and test cross-entropy (generalization); and the
final test accuracy for every learning rate of the sweep.

    python examples/classification_ce_vs_mse.py [--quick] [--no-progress] [--out DIR]
        [--optimizer adam|sgd]
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

NAME = "classification_ce_vs_mse"
CLASSES = 10
THRESHOLDS = (0.95, 0.97)
LEARNING_RATES = {"adam": [3e-4, 1e-3, 3e-3, 1e-2], "sgd": [0.01, 0.03, 0.1, 0.3]}
CHUNK = 25  # steps between evaluations
LOSSES = {"cross-entropy": "ce", "squared error": "mse"}


class MLP(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def loss_value(kind, logits, labels):
    if kind == "ce":
        return jaxloss.softmax_cross_entropy(logits, labels, reduction="mean")
    probs = jax.nn.softmax(logits)
    per_class = jaxloss.squared_error(probs, jax.nn.one_hot(labels, CLASSES))
    return jnp.mean(jnp.sum(per_class, axis=-1))


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=1000, stratify=y, random_state=0
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, train_size=297, stratify=y_rest, random_state=0
    )
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def train(args, label, kind, data, lrs, seeds, steps, width, batch, optimizer):
    """Train one model per (learning rate, seed), all at once under vmap."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = jax.tree.map(jnp.asarray, data)
    runs = [(lr, s) for lr in lrs for s in seeds]
    graphdef, params = _common.stack_models([MLP(width, nnx.Rngs(s)) for _, s in runs])
    lr = jnp.asarray([lr for lr, _ in runs], jnp.float32)
    keys = jnp.stack([jax.random.key(1000 + s) for _, s in runs])
    # Learning rate applied by hand so that it can differ per vmapped model.
    tx = optax.scale_by_adam() if optimizer == "adam" else optax.trace(decay=0.9)

    def one_model_step(p, o, rate, key, t):
        idx = jax.random.randint(jax.random.fold_in(key, t), (batch,), 0, len(x_train))

        def objective(p):
            logits = nnx.merge(graphdef, p)(x_train[idx])
            return loss_value(kind, logits, y_train[idx])

        loss, grads = jax.value_and_grad(objective)(p)
        updates, o = tx.update(grads, o, p)
        p = jax.tree.map(lambda w, u: w - rate * u, p, updates)
        return p, o, loss

    def step(state, t):
        p, o = state
        p, o, loss = jax.vmap(one_model_step, in_axes=(0, 0, 0, 0, None))(p, o, lr, keys, t)
        return (p, o), loss

    @jax.jit
    def evaluate(state):
        def one(p):
            model = nnx.merge(graphdef, p)
            val_logits, test_logits = model(x_val), model(x_test)
            return (
                jnp.mean(jnp.argmax(val_logits, -1) == y_val),
                jnp.mean(jnp.argmax(test_logits, -1) == y_test),
                jaxloss.softmax_cross_entropy(test_logits, y_test, reduction="mean"),
                jaxloss.softmax_cross_entropy(model(x_train), y_train, reduction="mean"),
            )

        return jax.vmap(one)(state[0])

    state = (params, jax.vmap(tx.init)(params))
    _, losses, evals = _common.train_loop(
        args, step, state, steps, desc=label, chunk=CHUNK, evaluate=evaluate
    )
    shape = (len(lrs), len(seeds))
    curves = {
        "step": np.array([t for t, _ in evals]),
        "val_acc": np.stack([np.asarray(e[0]).reshape(shape) for _, e in evals], -1),
        "test_acc": np.stack([np.asarray(e[1]).reshape(shape) for _, e in evals], -1),
        "test_ce": np.stack([np.asarray(e[2]).reshape(shape) for _, e in evals], -1),
        "train_ce": np.stack([np.asarray(e[3]).reshape(shape) for _, e in evals], -1),
        # training loss averaged over each chunk of minibatches
        "train_loss": losses.reshape(-1, CHUNK, *shape).mean(1).transpose(1, 2, 0),
    }
    return curves


def steps_to(curve_steps, acc, threshold):
    """First evaluation step at which the accuracy reaches ``threshold`` (nan: never)."""
    reached = acc >= threshold
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(-1), curve_steps[first], np.nan)


def fmt_steps(values):
    values = np.asarray(values, np.float64)
    never = int(np.isnan(values).sum())
    if never == len(values):
        return "never"
    text = _common.pm(values[~np.isnan(values)], 0)
    return text + (f" ({never} of {len(values)} never)" if never else "")


def main():
    def extra(parser):
        parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")

    args = _common.parse_args(NAME, __doc__.splitlines()[0], extra)
    n_seeds, steps, width, batch = (2, 200, 64, 64) if args.quick else (5, 1500, 128, 64)
    lrs = LEARNING_RATES[args.optimizer]
    if args.quick:
        lrs = lrs[1:3]
    seeds = list(range(n_seeds))
    data = load_data()

    curves = {}
    for label, kind in LOSSES.items():
        curves[label] = train(
            args, label, kind, data, lrs, seeds, steps, width, batch, args.optimizer
        )

    rows, sweep_rows, numbers, chosen = [], [], {}, {}
    for label, c in curves.items():
        final_val = c["val_acc"][..., -1].mean(-1)
        best = int(np.argmax(final_val))
        chosen[label] = best
        s95, s97 = (steps_to(c["step"], c["val_acc"][best], t) for t in THRESHOLDS)
        test_acc, test_ce = c["test_acc"][best, :, -1], c["test_ce"][best, :, -1]
        train_ce = c["train_ce"][best, :, -1]
        rows.append(
            [
                label,
                f"{lrs[best]:g}",
                fmt_steps(s95),
                fmt_steps(s97),
                _common.pm(train_ce, 1, style="e"),
                _common.pm(test_acc, 1, 100),
                _common.pm(test_ce, 3),
            ]
        )
        sweep_rows.append(
            [label] + [_common.pm(c["test_acc"][i, :, -1], 1, 100) for i in range(len(lrs))]
        )
        numbers[label] = {
            "chosen_learning_rate": lrs[best],
            "steps_to_95_val": s95.tolist(),
            "steps_to_97_val": s97.tolist(),
            "final_training_cross_entropy": train_ce.tolist(),
            "final_test_accuracy": test_acc.tolist(),
            "final_test_cross_entropy": test_ce.tolist(),
            "final_test_accuracy_per_lr": c["test_acc"][..., -1].tolist(),
        }

    table = _common.markdown_table(
        [
            "trained with",
            "chosen lr",
            "steps to 95 % val acc",
            "steps to 97 % val acc",
            "final training cross-entropy",
            "test accuracy (%)",
            "test cross-entropy",
        ],
        rows,
    )
    sweep = _common.markdown_table(
        ["test accuracy (%) at lr"] + [f"{lr:g}" for lr in lrs], sweep_rows
    )
    notes = (
        f"{sweep}\n\n"
        f"Mean ± std over {n_seeds} seeds (initialization and minibatch order). "
        f"MLP 64-{width}-{width}-10 (ReLU), {args.optimizer} "
        f"({'β = 0.9, 0.999' if args.optimizer == 'adam' else 'momentum 0.9'}), "
        f"batch {batch}, {steps} steps; 1000 training, 297 validation and 500 test digits. "
        "The learning rate is the one with the best mean validation accuracy after the last "
        f"step; steps to a validation accuracy are counted every {CHUNK} steps."
    )
    _common.write_results(
        args,
        table,
        settings={
            "optimizer": args.optimizer,
            "learning_rates": lrs,
            "seeds": n_seeds,
            "steps": steps,
            "width": width,
            "batch": batch,
        },
        numbers=numbers,
        notes=notes,
    )

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.4))
    for color, (label, c) in zip(["C0", "C1"], curves.items(), strict=True):
        best = chosen[label]
        t_loss = np.arange(1, c["train_loss"].shape[-1] + 1) * CHUNK
        for ax, key, t in [
            (axes[0], "train_loss", t_loss),
            (axes[1], "train_ce", c["step"]),
            (axes[2], "test_acc", c["step"]),
        ]:
            y = c[key][best]
            mean = y.mean(0)
            ax.plot(t, mean, color=color, label=f"{label} (lr {lrs[best]:g})")
            ax.fill_between(t, y.min(0), y.max(0), color=color, alpha=0.2)
        final = c["test_acc"][..., -1]
        axes[3].errorbar(
            lrs, final.mean(-1), yerr=final.std(-1), color=color, marker="o", capsize=3, label=label
        )
    axes[0].set(xlabel="step", ylabel="training loss (own objective)", yscale="log")
    axes[0].set_title("training loss (minibatch), mean and min–max over seeds", fontsize=10)
    axes[1].set(xlabel="step", ylabel="cross-entropy on the training set", yscale="log")
    axes[1].set_title("training cross-entropy, both models", fontsize=10)
    axes[2].set(xlabel="step", ylabel="test accuracy", ylim=(0.8, 1.0))
    axes[2].set_title("test accuracy, mean and min–max over seeds", fontsize=10)
    axes[3].set(xlabel="learning rate", ylabel="final test accuracy", xscale="log")
    axes[3].set_title("learning-rate sweep (mean ± std over seeds)", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _common.save_figure(args, fig, "ce_vs_mse.png")


if __name__ == "__main__":
    main()
