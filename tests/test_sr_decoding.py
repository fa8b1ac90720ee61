"""Decoding equations from SNIP latents (greedy, sampled) with a KV cache, against the original.

Fixtures from ../shared/fixtures/snip_sr_original/ (the original SR code on its tiny
checkpoint): tiny_sr_io.npz (greedy ids/lengths, per-step top-5 scores, first-step logits) and
tiny_sr_decode.json (its decode_cases and each sample's greedy/beam decodings with infix).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snip_jax.convert import converter
from snip_jax.model import SNIPSR
from snip_jax.sr import decoding
from snip_jax.symbolic.tokenizers import build_vocab, generated_expression

SR_FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "snip_sr_original"
DECODE = json.loads((SR_FIXTURES / "tiny_sr_decode.json").read_text())


@pytest.fixture(scope="module")
def tiny():
  """(model, params, env config, io arrays) of the tiny SR checkpoint."""
  cfg, env_cfg, params, _ = converter.read_pth(SR_FIXTURES / "tiny_sr.pth", kind="sr")
  return SNIPSR(cfg), params, env_cfg, dict(np.load(SR_FIXTURES / "tiny_sr_io.npz"))


def test_greedy_decoding_gives_the_originals_ids_and_lengths(tiny):
  model, params, _, io = tiny
  ids, lengths = decoding.generate_from_latent(model, params, io["encoder_y_latent"])
  np.testing.assert_array_equal(np.asarray(ids), io["greedy_ids"])
  np.testing.assert_array_equal(np.asarray(lengths), io["greedy_len"])


def _cached_step_logits(model, params, src, ids, lengths, n_steps):
  """Logits of decode_step at positions 0..n_steps-1 fed `ids` (the original's alive mask)."""
  cache = model.apply({"params": params}, src, ids.shape[1],
                      method=lambda m, s, n: m.decoder.init_cache(s, n))
  out = []
  for position in range(n_steps):
    logits, cache = model.apply({"params": params}, jnp.asarray(ids[:, position]), position,
                                jnp.asarray(lengths > position), cache,
                                method=lambda m, *a: m.decoder.decode_step(*a))
    out.append(np.asarray(logits))
  return np.stack(out)


def test_cached_steps_equal_the_full_forward_and_the_originals_step_scores(tiny):
  model, params, _, io = tiny
  src = model.apply({"params": params}, jnp.asarray(io["encoder_y_latent"]),
                    method=SNIPSR.map_latent)
  ids, lengths = io["greedy_ids"], io["greedy_len"]
  n_steps = io["greedy_step_top5_ids"].shape[0]
  cached = _cached_step_logits(model, params, src, ids, lengths, n_steps)  # [steps, B, V]

  top5 = np.argsort(-cached, axis=-1, kind="stable")[..., :5]
  np.testing.assert_array_equal(top5, io["greedy_step_top5_ids"])
  np.testing.assert_allclose(np.take_along_axis(cached, top5, -1), io["greedy_step_top5_logits"],
                             atol=2e-5)
  np.testing.assert_allclose(cached[:3][..., io["logit_columns"]], io["greedy_logits_first3"],
                             atol=2e-5)
  full = np.asarray(model.apply({"params": params}, src, jnp.asarray(ids[:, :n_steps]),
                                jnp.asarray(np.minimum(lengths, n_steps)),
                                method=SNIPSR.decode)).swapaxes(0, 1)
  alive = np.arange(n_steps)[:, None] < lengths[None]
  np.testing.assert_allclose(cached[alive], full[alive], atol=2e-5)


@pytest.mark.parametrize("case", DECODE["decode_cases"], ids=lambda c: " ".join(c["tokens"]))
def test_token_lists_decode_as_in_the_original(tiny, case):
  expression = generated_expression(case["tokens"], tiny[2])
  assert (None if expression is None else expression.infix()) == case["infix"]


def test_greedy_rows_decode_to_the_originals_expressions(tiny):
  model, params, env_cfg, io = tiny
  ids, _ = decoding.generate_from_latent(model, params, io["encoder_y_latent"])
  words = build_vocab(env_cfg).equation_id2word
  for row, sample in zip(np.asarray(ids), DECODE["samples"]):
    expression = generated_expression([words[i] for i in row[1:-1]], env_cfg)
    assert expression.infix() == sample["greedy"]["infix_gen2eq"]


def test_rows_unfinished_at_max_len_end_with_eos(tiny):
  model, params, _, io = tiny
  cfg = model.cfg
  ids, lengths = decoding.generate_from_latent(model, params, io["encoder_y_latent"], max_len=6)
  ids = np.asarray(ids)
  np.testing.assert_array_equal(ids[:, :5], io["greedy_ids"][:, :5])
  assert (ids[:, 5] == cfg.eq_eos_id).all() and (np.asarray(lengths) == 6).all()


def test_sampling_is_seeded_and_follows_the_softmax(tiny):
  model, params, _, io = tiny
  latent = io["encoder_y_latent"][3:4]
  draw = lambda key, n, t: decoding.generate_from_latent(
      model, params, latent, samples_per_latent=n, temperature=t, rng=jax.random.key(key),
      max_len=3)[0]
  np.testing.assert_array_equal(draw(1, 4, 0.1), draw(1, 4, 0.1))
  assert not np.array_equal(draw(1, 64, 1.0), draw(2, 64, 1.0))

  first = np.asarray(draw(3, 4000, 2.0))[:, 1]
  logits = _cached_step_logits(model, params, model.apply(
      {"params": params}, jnp.asarray(latent), method=SNIPSR.map_latent),
      io["greedy_ids"][3:4], io["greedy_len"][3:4], 1)[0, 0]
  probabilities = np.asarray(jax.nn.softmax(jnp.asarray(logits) / 2.0))
  likely = np.argsort(-probabilities)[:5]
  observed = np.array([(first == w).mean() for w in likely])
  tolerance = 4 * np.sqrt(probabilities[likely] / 4000) + 1e-3  # 4 binomial sigmas
  assert (np.abs(observed - probabilities[likely]) < tolerance).all(), (observed,
                                                                       probabilities[likely])


def test_bad_decoding_options_are_refused(tiny):
  model, params, _, io = tiny
  latent = io["encoder_y_latent"][:1]
  for options, message in (({"max_len": 1}, "max_len"), ({"temperature": 0.0}, "temperature"),
                           ({"temperature": 0.1}, "rng")):
    with pytest.raises(ValueError, match=message):
      decoding.generate_from_latent(model, params, latent, **options)


def test_beam_search_keeps_the_originals_hypotheses_and_best(tiny):
  model, params, env_cfg, io = tiny
  src = model.apply({"params": params}, jnp.asarray(io["encoder_y_latent"]),
                    method=SNIPSR.map_latent)
  result = decoding.beam_search(model, params, src, beam_size=3)
  np.testing.assert_array_equal(result.lengths, io["beam_tgt_len"])
  np.testing.assert_array_equal(result.ids, io["beam_decoded"].T[:, :result.ids.shape[1]])
  words = build_vocab(env_cfg).equation_id2word
  for i, (kept, sample) in enumerate(zip(result.hypotheses, DECODE["samples"])):
    lengths = io["beam_hyp_len"][i]
    assert [ids for _, ids in kept] == [io["beam_hyp_ids"][i, j, :n].tolist()
                                        for j, n in enumerate(lengths)]
    np.testing.assert_allclose([s for s, _ in kept], io["beam_hyp_scores"][i], atol=2e-5)
    assert min(s for s, _ in kept) == pytest.approx(io["beam_worst_score"][i], abs=2e-5)
    best = generated_expression([words[w] for w in kept[0][1][1:]], env_cfg)
    assert best.infix() == sample["beam_hyps"][0]["infix"]
