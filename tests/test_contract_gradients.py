"""The contract's gradient checks and extreme inputs, for every case in the table
(``tests/test_contract.py`` has the other checks). A file of its own: these checks compile
the largest programs, and pytest-xdist (``--dist loadfile``) can give this file to one
worker while the other runs ``tests/test_contract.py``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import contract as K
from tests.contract_table import CASES
from tests.gradcheck import check_grads

EXTREME = [c for c in CASES if c.extreme is not None]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_float64(case):
    f, primals = K.differentiable(case, K.cast(K.sample_inputs(case), jnp.float64))
    # Under jit: the finite differences step outside the domain at exact zeros (p = 0 −
    # 1e-4), which the concrete-input checks would reject (a negative probability).
    check_grads(jax.jit(f), primals, order=case.grad_order, modes=("fwd", "rev"))


@pytest.mark.parametrize("case", EXTREME, ids=str)
def test_extreme_inputs_stay_finite(case):
    """Finite value at the extreme inputs, eagerly and under jit, and finite gradients
    (under jit, where training computes them: eagerly every backward operation would be
    compiled on its own; eager gradients are checked by the masking tests)."""
    inputs = K.cast(case.extreme(), jnp.float32)
    out = K.call(case, inputs)
    assert np.isfinite(np.asarray(out)).all(), out
    f, primals = K.differentiable(case, inputs)
    argnums = tuple(range(len(primals)))

    @jax.jit
    def value_and_grads(*v):
        return f(*v), jax.grad(lambda *w: jnp.sum(f(*w)), argnums=argnums)(*v)

    jitted, grads = value_and_grads(*primals)
    assert np.isfinite(np.asarray(jitted)).all(), jitted
    for g in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(g)).all(), g
