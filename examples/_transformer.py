"""The small causal transformer (Flax NNX) of the language-model examples."""

from __future__ import annotations

import jax
from flax import nnx


class Block(nnx.Module):
    """Pre-norm self-attention and MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            heads, width, decode=False, keep_rngs=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attention(self.norm1(x), mask=mask)
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class CausalTransformer(nnx.Module):
    """Token and learned position embeddings, ``layers`` blocks, a final norm.

    ``hidden(tokens)`` [..., T] → [..., T, width]: the last layer's states, which the
    examples hand to the fused losses together with an output weight (``embed.embedding``
    [V, width] for tied embeddings, the "embedding" layout, or a head of their own).
    """

    def __init__(self, vocab: int, length: int, width: int, layers: int, heads: int, rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, width)))
        self.blocks = nnx.List([Block(width, heads, rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)

    def hidden(self, tokens):
        x = self.embed(tokens) + self.position[: tokens.shape[-1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
