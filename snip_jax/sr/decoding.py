"""Equations from SNIP latents: greedy and sampled decoding with a KV cache, jitted.

As the original's `generate_from_latent` (SR fixtures' README, quirks 8-11): a buffer of
`max_len` ids pre-filled with the decoder's `<PAD>`, position 0 = `<EOS>` used as BOS; each step
takes the raw logits of the newest position only (keys/values of earlier positions and of the
mapper's vectors come from the cache), picks the arg-max (greedy) or samples
softmax(logits / temperature) (what the SR pipeline uses, temperature 0.1); finished rows get
`<PAD>`; a row finishes when it emits `<EOS>` (the second copy's id: the first copy does not end
it); `lengths` count BOS and the final `<EOS>`. A row still unfinished at `max_len` gets `<EOS>`
in its last slot (the original's intent; its uint8 mask fails on current torch).
Sampling is seeded by a jax key, so a decode reproduces (the original's torch RNG is not).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from snip_jax.model import SNIPSR

Array = jax.Array


class Decoded(NamedTuple):
  """Decoded rows: ids [B, max_len] (BOS, tokens, <EOS>, <PAD>...), lengths [B] (BOS and <EOS>
  included) and scores [B] (the sum of the generated tokens' log-probabilities, <EOS> included,
  under the model at temperature 1)."""

  ids: Array
  lengths: Array
  scores: Array


def generate(model: SNIPSR, params: Any, src: Array, *, max_len: int = 200,
             temperature: Optional[float] = None, rng: Optional[Array] = None,
             use_cache: bool = True) -> Decoded:
  """Decode from mapper outputs src [B, max_src_len, dim].

  temperature None: greedy; else sampling at that temperature with `rng` (a jax key).
  use_cache=False recomputes the whole buffer at every step (same tokens; for checks and
  benchmarks).
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 (BOS and <EOS>), got {max_len}")
  if temperature is not None and not temperature > 0:
    raise ValueError(f"temperature must be > 0 (or None for greedy), got {temperature}")
  if temperature is not None and rng is None:
    raise ValueError("sampling needs rng, a jax.random key")
  rng = jax.random.key(0) if rng is None else rng
  return _generate(model, max_len, temperature, use_cache, params, jnp.asarray(src), rng)


def _next_logits(model: SNIPSR, use_cache: bool, params: Any, src: Array, ids: Array,
                 position: Array, lengths: Array, cache: Any) -> tuple[Array, Any]:
  """Logits [B, n_words] at `position`: one cached step, or the whole buffer recomputed."""
  if use_cache:
    return model.apply({"params": params}, ids[:, position], position, lengths > position, cache,
                       method=lambda m, *a: m.decoder.decode_step(*a))

  def recompute(m):
    hidden = m.decoder(ids, lengths, src)
    return m.decoder.logits(jax.lax.dynamic_index_in_dim(hidden, position, 1, False))

  return model.apply({"params": params}, method=recompute), cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate(model: SNIPSR, max_len: int, temperature: Optional[float], use_cache: bool,
              params: Any, src: Array, rng: Array) -> Decoded:
  """The decoding loop (lax.while_loop over positions; stops when every row has finished)."""
  cfg = model.cfg
  batch = src.shape[0]
  cache = _init_cache(model, max_len, params, src) if use_cache else ()
  ids = jnp.full((batch, max_len), cfg.eq_pad_id, jnp.int32).at[:, 0].set(cfg.eq_eos_id)
  state = (jnp.int32(1), ids, jnp.ones((batch,), jnp.int32), jnp.ones((batch,), bool),
           jnp.zeros((batch,), jnp.float32), cache)

  def not_done(state):
    return (state[0] < max_len) & state[3].any()

  def step(state):
    cur_len, ids, lengths, unfinished, scores, cache = state
    logits, cache = _next_logits(model, use_cache, params, src, ids, cur_len - 1, lengths, cache)
    logits = logits.astype(jnp.float32)
    if temperature is None:
      chosen = jnp.argmax(logits, axis=-1)
    else:
      chosen = jax.random.categorical(jax.random.fold_in(rng, cur_len), logits / temperature)
    chosen = jnp.where(unfinished, chosen.astype(jnp.int32), cfg.eq_pad_id)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), chosen[:, None], 1)[:, 0]
    ids = jax.lax.dynamic_update_slice_in_dim(ids, chosen[:, None], cur_len, axis=1)
    return (cur_len + 1, ids, lengths + unfinished, unfinished & (chosen != cfg.eq_eos_id),
            scores + jnp.where(unfinished, log_p, 0.0), cache)

  cur_len, ids, lengths, unfinished, scores, _ = jax.lax.while_loop(not_done, step, state)
  cut = unfinished & (cur_len == max_len)
  ids = ids.at[:, max_len - 1].set(jnp.where(cut, cfg.eq_eos_id, ids[:, max_len - 1]))
  return Decoded(ids, lengths, scores)


def generate_from_latent(model: SNIPSR, params: Any, latents: Array, *,
                         samples_per_latent: int = 1, **options) -> Decoded:
  """Latents [B, latent_dim] -> `samples_per_latent` decodings each, [B * samples, max_len].

  Rows b * samples ... (b + 1) * samples - 1 come from latent b; options as `generate`.
  """
  src = model.apply({"params": params}, jnp.asarray(latents), method=SNIPSR.map_latent)
  return generate(model, params, jnp.repeat(src, samples_per_latent, axis=0), **options)


# ------------------------------------------------------------------------- beam search


@dataclasses.dataclass
class _Hypotheses:
  """The best `size` finished hypotheses of one sentence, scored sum_logprobs / len**penalty."""

  size: int
  length_penalty: float
  early_stopping: bool
  max_len: int
  stored: list = dataclasses.field(default_factory=list)  # [(score, ids)]
  worst_score: float = 1e9

  def add(self, ids: list[int], sum_logprobs: float) -> None:
    """Keep `ids` if there is room or it beats the worst kept (which is then dropped)."""
    score = sum_logprobs / len(ids) ** self.length_penalty
    if len(self.stored) < self.size or score > self.worst_score:
      self.stored.append((score, ids))
      if len(self.stored) > self.size:
        ranked = sorted((s, i) for i, (s, _) in enumerate(self.stored))
        del self.stored[ranked[0][1]]
        self.worst_score = ranked[1][0]
      else:
        self.worst_score = min(score, self.worst_score)

  def is_done(self, best_sum_logprobs: float) -> bool:
    """Whether no later hypothesis can enter (early stopping: as soon as `size` are kept)."""
    if len(self.stored) < self.size:
      return False
    if self.early_stopping:
      return True
    return self.worst_score >= best_sum_logprobs / self.max_len ** self.length_penalty


@dataclasses.dataclass(frozen=True)
class BeamResult:
  """Per sentence its best hypothesis (BOS ... <EOS>, padded) and every kept (score, ids)."""

  ids: np.ndarray  # [B, longest + 1]: BOS, tokens, <EOS>, then <PAD>
  lengths: np.ndarray  # [B]: BOS and <EOS> included
  hypotheses: list  # per sentence [(score, ids without the final <EOS>)], best first


def beam_search(model: SNIPSR, params: Any, src: Array, *, beam_size: int = 3,
                length_penalty: float = 1.0, early_stopping: bool = True,
                max_len: int = 200) -> BeamResult:
  """The original's `generate_beam` from mapper outputs src [B, max_src_len, dim].

  Log-softmax scores; per step the top 2 * beam_size continuations over all beams are walked in
  order: one ending in `<EOS>` (or any at the last position) becomes a finished hypothesis
  (without its `<EOS>`), the others fill the next beams. A sentence is done once `beam_size`
  hypotheses are kept (early_stopping) or no better one can come; its beams then idle.
  """
  cfg = model.cfg
  batch = src.shape[0]
  cache = _init_cache(model, max_len, params, jnp.repeat(jnp.asarray(src), beam_size, axis=0))
  generated = np.full((batch * beam_size, max_len), cfg.eq_pad_id, np.int64)
  generated[:, 0] = cfg.eq_eos_id
  beam_scores = np.zeros((batch, beam_size), np.float32)
  beam_scores[:, 1:] = -1e9
  hyps = [_Hypotheses(beam_size, length_penalty, early_stopping, max_len) for _ in range(batch)]
  done = [False] * batch
  for cur_len in range(1, max_len):
    scores, words, cache = _beam_step(model, beam_size, params, generated[:, cur_len - 1],
                                      cur_len - 1, cache, beam_scores.reshape(-1))
    chosen = _select_beams(np.asarray(scores), np.asarray(words), generated, cur_len, hyps, done,
                           cfg.n_words, cfg.eq_eos_id, cfg.eq_pad_id, max_len)
    beam_scores = np.array([c[0] for c in chosen], np.float32).reshape(batch, beam_size)
    rows = np.array([c[2] for c in chosen])
    generated = generated[rows]
    generated[:, cur_len] = [c[1] for c in chosen]
    cache = _reorder(cache, jnp.asarray(rows))
    if all(done):
      break
  return _best_hypotheses(hyps, cfg.eq_eos_id, cfg.eq_pad_id)


def _select_beams(scores, words, generated, cur_len, hyps, done, n_words, eos, pad, max_len):
  """(score, word, source row) of every next beam; finished hypotheses go to `hyps`."""
  beam_size = hyps[0].size
  chosen = []
  for sentence, hyp in enumerate(hyps):
    done[sentence] = done[sentence] or hyp.is_done(float(scores[sentence].max()))
    if done[sentence]:
      chosen.extend([(0.0, pad, 0)] * beam_size)
      continue
    beams = []
    for index, value in zip(words[sentence], scores[sentence]):
      row, word = sentence * beam_size + int(index) // n_words, int(index) % n_words
      if word == eos or cur_len + 1 == max_len:
        hyp.add(generated[row, :cur_len].tolist(), float(value))
      else:
        beams.append((float(value), word, row))
      if len(beams) == beam_size:
        break
    chosen.extend(beams or [(0.0, pad, 0)] * beam_size)
  return chosen


def _best_hypotheses(hyps: list, eos: int, pad: int) -> BeamResult:
  """The best hypothesis of each sentence + <EOS>, padded; all kept ones sorted by score."""
  ranked = [sorted(h.stored, key=lambda s: -s[0]) for h in hyps]
  best = [r[0][1] for r in ranked]
  lengths = np.array([len(b) + 1 for b in best])
  ids = np.full((len(best), lengths.max()), pad, np.int64)
  for i, b in enumerate(best):
    ids[i, :len(b)] = b
    ids[i, len(b)] = eos
  return BeamResult(ids, lengths, ranked)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_cache(model: SNIPSR, max_len: int, params: Any, src: Array) -> dict:
  """The decoder's cache for src [N, max_src_len, dim] and `max_len` positions."""
  return model.apply({"params": params}, src, max_len,
                     method=lambda m, s, n: m.decoder.init_cache(s, n))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _beam_step(model: SNIPSR, beam_size: int, params: Any, tokens: Array, position: Array,
               cache: dict, beam_scores: Array) -> tuple[Array, Array, dict]:
  """Top 2 * beam_size (cumulative log-prob, beam * n_words + word) per sentence, and the cache."""
  alive = jnp.ones(tokens.shape, bool)
  logits, cache = model.apply({"params": params}, tokens, position, alive, cache,
                              method=lambda m, *a: m.decoder.decode_step(*a))
  scores = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1) + beam_scores[:, None]
  scores = scores.reshape(-1, beam_size * scores.shape[-1])
  top, index = jax.lax.top_k(scores, 2 * beam_size)
  return top, index, cache


@jax.jit
def _reorder(cache: dict, rows: Array) -> dict:
  """The cache of the rows the next beams continue."""
  return jax.tree.map(lambda c: c[rows], cache)
