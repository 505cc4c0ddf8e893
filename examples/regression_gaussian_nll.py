"""Heteroscedastic 1-D regression: `gaussian_nll` with a learned scale against squared error.

The data are y = f(x) + σ(x)·ε with a noise level σ(x) that grows tenfold across the
input range. Two Flax NNX MLPs of the same size are trained with the same optimizer and
step budget:

- "Gaussian NLL": the network predicts the mean μ(x) and the log-scale log σ(x) and is
  trained with ``jaxloss.gaussian_nll(mean, y, log_scale=...)``;
- "squared error": the network predicts μ(x) only and is trained with
  ``jaxloss.squared_error``; its predictive σ is the constant that maximizes the training
  likelihood, the root mean squared training residual (homoscedastic).

Reported on held-out data, mean ± std over seeds: RMSE of the mean, the Gaussian NLL of
the test targets under each model's predictive distribution, and calibration, the
fraction of test points within ±1σ and ±2σ (ideal: 68.3 % and 95.4 %).

    python examples/regression_gaussian_nll.py [--quick] [--no-progress] [--out DIR]
"""

from __future__ import annotations

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jaxloss

NAME = "regression_gaussian_nll"
X_RANGE = (-3.0, 3.0)


def true_mean(x):
    return np.sin(1.5 * x) + 0.3 * x


def true_scale(x):
    # 0.05 at the left edge, 0.65 at the right edge
    return 0.05 + 0.1 * (x - X_RANGE[0])


def make_data(rng, n):
    x = rng.uniform(*X_RANGE, size=(n, 1))
    y = true_mean(x) + true_scale(x) * rng.standard_normal((n, 1))
    return x.astype(np.float32), y.astype(np.float32)


class MLP(nnx.Module):
    def __init__(self, outputs: int, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(1, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, outputs, rngs=rngs)

    def __call__(self, x):
        h = nnx.tanh(self.l1(x))
        h = nnx.tanh(self.l2(h))
        return self.out(h)


def predict(graphdef, params, x):
    """(mean, log σ) for the NLL model, (mean, None) for the squared-error one."""
    out = nnx.merge(graphdef, params)(x)
    return out[:, :1], (out[:, 1:] if out.shape[1] == 2 else None)


def train(args, kind, seeds, x, y, steps, width, lr):
    graphdef, params = _common.stack_models(
        [MLP(2 if kind == "nll" else 1, width, nnx.Rngs(s)) for s in seeds]
    )
    tx = optax.adam(lr)

    def loss_fn(p):
        mean, log_scale = predict(graphdef, p, x)
        if kind == "nll":
            return jaxloss.gaussian_nll(mean, y, log_scale=log_scale, reduction="mean")
        return jaxloss.squared_error(mean, y, reduction="mean")

    def one_model_step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    def step(state, t):
        p, o, loss = jax.vmap(one_model_step)(*state)
        return (p, o), loss

    state = (params, jax.vmap(tx.init)(params))
    label = "Gaussian NLL" if kind == "nll" else "squared error"
    (params, _), losses, _ = _common.train_loop(args, step, state, steps, desc=label, chunk=100)
    return graphdef, params, losses


def predictive(kind, graphdef, params, x_train, y_train, x):
    """Per-seed predictive mean and σ at ``x``, arrays of shape (seeds, n)."""

    def one(p):
        mean, log_scale = predict(graphdef, p, x)
        if kind == "nll":
            return mean[:, 0], jnp.exp(log_scale[:, 0])
        train_mean, _ = predict(graphdef, p, x_train)
        rms = jnp.sqrt(jnp.mean(jnp.square(train_mean - y_train)))
        return mean[:, 0], jnp.full(x.shape[0], rms)

    mean, scale = jax.vmap(one)(params)
    return np.asarray(mean), np.asarray(scale)


def main():
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    n_seeds, steps, width, n_train = (2, 300, 32, 256) if args.quick else (5, 4000, 64, 1000)
    lr = 3e-3
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(rng, n_train)
    x_test, y_test = make_data(rng, 5000)
    seeds = list(range(n_seeds))
    left = x_test[:, 0] < 0  # the low-noise half of the input range

    rows, numbers, fits = [], {}, {}
    for kind, label in [("nll", "Gaussian NLL"), ("mse", "squared error")]:
        graphdef, params, losses = train(args, kind, seeds, x_train, y_train, steps, width, lr)
        mean, scale = predictive(kind, graphdef, params, x_train, y_train, x_test)
        z = np.abs(y_test[:, 0] - mean) / scale
        nll = np.asarray(
            jaxloss.gaussian_nll(jnp.asarray(mean), y_test[:, 0], scale=jnp.asarray(scale))
        ).mean(axis=1)
        m = {
            "rmse": np.sqrt(np.mean((mean - y_test[:, 0]) ** 2, axis=1)),
            "test_nll": nll,
            "within_1_sigma": np.mean(z <= 1, axis=1),
            "within_2_sigma": np.mean(z <= 2, axis=1),
            "within_1_sigma_low_noise_half": np.mean(z[:, left] <= 1, axis=1),
            "within_1_sigma_high_noise_half": np.mean(z[:, ~left] <= 1, axis=1),
        }
        numbers[label] = {k: v.tolist() for k, v in m.items()}
        rows.append(
            [
                label,
                _common.pm(m["rmse"]),
                _common.pm(m["test_nll"]),
                _common.pm(m["within_1_sigma"], 1, 100),
                _common.pm(m["within_2_sigma"], 1, 100),
                _common.pm(m["within_1_sigma_low_noise_half"], 1, 100),
                _common.pm(m["within_1_sigma_high_noise_half"], 1, 100),
            ]
        )
        fits[label] = (kind, graphdef, params, losses)

    truth_nll = np.mean(
        0.5 * ((y_test[:, 0] - true_mean(x_test[:, 0])) / true_scale(x_test[:, 0])) ** 2
        + np.log(true_scale(x_test[:, 0]))
        + 0.5 * np.log(2 * np.pi)
    )
    rows.append(["true noise model", "", f"{truth_nll:.3f}", "68.3", "95.4", "68.3", "68.3"])
    header = ["trained with", "test RMSE", "test NLL", "within ±1σ (%)", "within ±2σ (%)"]
    header += ["±1σ, x < 0 (%)", "±1σ, x > 0 (%)"]
    table = _common.markdown_table(header, rows)
    notes = (
        f"Mean ± std over {n_seeds} seeds; {n_train} training and {len(x_test)} test points, "
        f"MLP 1-{width}-{width}-(2 or 1) with tanh, Adam lr {lr}, {steps} full-batch steps. "
        "The squared-error model's σ is its RMS training residual (one σ for all x); "
        "the last row is the NLL of the test data under the true mean and σ(x), "
        "and the ideal coverages. σ(x) grows with x, so a single σ is too wide for x < 0 "
        "and too narrow for x > 0."
    )
    _common.write_results(
        args,
        table,
        settings={"seeds": n_seeds, "steps": steps, "width": width, "n_train": n_train, "lr": lr},
        numbers={**numbers, "true_noise_model_nll": truth_nll},
        notes=notes,
    )

    grid = np.linspace(*X_RANGE, 400, dtype=np.float32)[:, None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (label, (kind, graphdef, params, _)) in zip(axes[:2], fits.items(), strict=True):
        mean, scale = predictive(kind, graphdef, params, x_train, y_train, grid)
        ax.scatter(x_train[:, 0], y_train[:, 0], s=4, color="0.6", label="training data")
        ax.plot(grid, true_mean(grid), "k--", lw=1, label="true mean")
        ax.plot(grid[:, 0], mean[0], color="C0", label="predicted mean")
        ax.fill_between(
            grid[:, 0], mean[0] - 2 * scale[0], mean[0] + 2 * scale[0], alpha=0.25, label="± 2σ"
        )
        ax.set(title=f"trained with {label} (seed 0)", xlabel="x", ylabel="y")
        ax.legend(loc="upper left", fontsize=8)
        if kind == "nll":
            axes[2].plot(grid[:, 0], scale.T, color="C0", alpha=0.6, lw=1)
            axes[2].plot([], [], color="C0", label="Gaussian NLL (each seed)")
        else:
            axes[2].plot(grid[:, 0], scale[0], color="C1", label="squared error (RMS residual)")
    axes[2].plot(grid[:, 0], true_scale(grid[:, 0]), "k--", label="true σ(x)")
    axes[2].set(title="predicted σ(x)", xlabel="x", ylabel="σ")
    axes[2].legend(fontsize=8)
    _common.save_figure(args, fig, "predictive.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for color, (label, (*_, losses)) in zip(["C0", "C1"], fits.items(), strict=True):
        ax.plot(losses.mean(axis=1), color=color, label=label)
    ax.set(xlabel="step", ylabel="training loss (mean over seeds)", yscale="symlog")
    ax.legend()
    _common.save_figure(args, fig, "training_loss.png")


if __name__ == "__main__":
    main()
