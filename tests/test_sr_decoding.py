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
from snip_jax.model import SNIPSR, init_params
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
  ids, lengths, _ = decoding.generate_from_latent(model, params, io["encoder_y_latent"])
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
  ids = decoding.generate_from_latent(model, params, io["encoder_y_latent"]).ids
  words = build_vocab(env_cfg).equation_id2word
  for row, sample in zip(np.asarray(ids), DECODE["samples"]):
    expression = generated_expression([words[i] for i in row[1:-1]], env_cfg)
    assert expression.infix() == sample["greedy"]["infix_gen2eq"]


def test_rows_unfinished_at_max_len_end_with_eos(tiny):
  model, params, _, io = tiny
  cfg = model.cfg
  ids, lengths, _ = decoding.generate_from_latent(model, params, io["encoder_y_latent"],
                                                  max_len=6)
  ids = np.asarray(ids)
  np.testing.assert_array_equal(ids[:, :5], io["greedy_ids"][:, :5])
  assert (ids[:, 5] == cfg.eq_eos_id).all() and (np.asarray(lengths) == 6).all()


def test_sampling_is_seeded_and_follows_the_softmax(tiny):
  model, params, _, io = tiny
  latent = io["encoder_y_latent"][3:4]
  draw = lambda key, n, t: decoding.generate_from_latent(
      model, params, latent, samples_per_latent=n, temperature=t, rng=jax.random.key(key),
      max_len=3).ids
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


@pytest.mark.parametrize("sizes", [dict(enc_emb_dim=16, dec_emb_dim=16, n_dec_layers=1,
                                        n_enc_heads=2, n_dec_heads=2, max_src_len=7),
                                   dict(enc_emb_dim=24, dec_emb_dim=24, n_dec_layers=3,
                                        n_enc_heads=3, n_dec_heads=3, max_src_len=40)])
def test_the_cache_gives_the_tokens_of_recomputing_the_prefix(tiny, sizes):
  cfg = tiny[0].cfg.replace(**sizes)
  model = SNIPSR(cfg)
  params = jax.jit(lambda key: init_params(model, key))(jax.random.key(sum(sizes.values())))
  latents = jax.random.normal(jax.random.key(1), (5, cfg.latent_dim))
  for options in ({}, {"temperature": 1.0, "rng": jax.random.key(2)}):
    cached = decoding.generate_from_latent(model, params, latents, max_len=30, **options)
    recomputed = decoding.generate_from_latent(model, params, latents, max_len=30,
                                               use_cache=False, **options)
    np.testing.assert_array_equal(np.asarray(cached.ids), np.asarray(recomputed.ids))
    np.testing.assert_array_equal(np.asarray(cached.lengths), np.asarray(recomputed.lengths))
    np.testing.assert_allclose(cached.scores, recomputed.scores, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def pretrained_sr(tmp_path_factory):
  """load_pretrained of the tiny SR checkpoint, from the .pth and from its converted directory."""
  from snip_jax import load_pretrained

  converted = converter.convert_pth(SR_FIXTURES / "tiny_sr.pth",
                                    tmp_path_factory.mktemp("sr") / "converted")
  return load_pretrained(SR_FIXTURES / "tiny_sr.pth"), load_pretrained(converted)


def _full_samples(io):
  """(x, y) of the fixture's 200-point samples (their latents do not depend on the batch)."""
  full = [i for i in range(len(io["n_points"])) if io["n_points"][i] == 200]
  return full, [(io["x_to_fit"][i, :, :io["d_in"][i]], io["y_to_fit"][i]) for i in full]


def test_generate_gives_the_originals_greedy_and_beam_equations(tiny, pretrained_sr):
  io = tiny[3]
  full, datasets = _full_samples(io)
  for model in pretrained_sr:
    greedy = model.generate(datasets)
    beams = model.generate(datasets, method="beam", beam_size=3)
    for i, found, beam in zip(full, greedy, beams):
      sample = DECODE["samples"][i]
      assert [str(c.expression) for c in found] == [sample["greedy"]["infix_gen2eq"]]
      assert found[0].tokens == sample["greedy"]["tokens"][1:-1]
      assert [str(c.expression) for c in beam] == [h["infix"] for h in sample["beam_hyps"]]
      np.testing.assert_allclose([c.score for c in beam], io["beam_hyp_scores"][i], atol=2e-5)
    assert [str(c.expression) for c in model.generate(*datasets[0])] == \
        [str(c.expression) for c in greedy[0]]


def test_generate_samples_are_seeded_and_ranked_by_score(pretrained_sr, tiny):
  model = pretrained_sr[0]
  x, y = _full_samples(tiny[3])[1][0]
  draw = lambda seed: model.generate(x, y, method="sample", n_samples=6, seed=seed)
  first = draw(0)
  assert len(first) == 6 and [c.score for c in first] == sorted((c.score for c in first),
                                                                reverse=True)
  assert [c.tokens for c in first] == [c.tokens for c in draw(0)]
  assert [c.tokens for c in first] != [c.tokens for c in draw(1)]


def test_generate_refuses_bad_input_with_one_line(pretrained_sr, tiny):
  from snip_jax import load_pretrained

  model = pretrained_sr[0]
  x, y = _full_samples(tiny[3])[1][0]
  cases = [(dict(x=x, y=y, method="topk"), "method must be one of"),
           (dict(x=x, y=y, n_samples=0, method="sample"), "n_samples must be"),
           (dict(x=np.ones((5, 3)), y=np.ones(5)), "3 input columns"),
           (dict(x=np.full((5, 1), np.nan), y=np.ones(5)), "NaN/inf")]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      model.generate(**kwargs)
  with pytest.raises(ValueError, match="embed_equations needs a SNIP pretraining checkpoint"):
    model.embed_equations("x_0")
  snip = load_pretrained(SR_FIXTURES.parent / "snip_original" / "tiny.pth")
  with pytest.raises(ValueError, match=r"generate needs a SNIP symbolic-regression \(SR\)"):
    snip.generate(x, y)
