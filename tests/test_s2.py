"""System 2 training: replay buffer, random step sizes and counts, truncation, clamps,
Langevin after warmup, the contrastive loss, non-gd inner optimizers, the S2 configs."""

import functools
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ebt_jax
from ebt_jax import config as config_lib
from ebt_jax import tasks
from ebt_jax.errors import ConfigError
from ebt_jax.official_hparams import from_official_hparams
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.models import ar_ebt
from ebt_jax.tasks import options, text
from ebt_jax.thinking import Schedule, optimizers, think
from ebt_jax.training import optimizer as optimizer_lib
from ebt_jax.tasks import replay as replay_lib
from ebt_jax.training import program as program_lib
from ebt_jax.training import step as step_lib
from ebt_jax.training import trainer
from ebt_jax.training.metrics import read_metrics
from conftest import perturb, run_config, tiny_config, to_f64

CONFIGS = Path(__file__).parent.parent / "configs"


def s2_run_config(**train):
  """run_config with the official S2 recipe switched on (small buffer, so it wraps)."""
  c = run_config(**train)
  c.thinking.update(num_steps=1, random_steps=2, random_steps_min=2, step_size=2.0,
                    step_size_learnable=False, step_size_random_scale=2.0, langevin_noise=0.5,
                    truncate=True, detach=False, replay_buffer=True, replay_buffer_size=6,
                    replay_buffer_sample_fraction=0.5)
  return config_lib.validate(c)


def buffer_config(batch_size=4, groups=2, size=3, fraction=0.5):
  c = tiny_config("default")
  c.model.context_length = 2
  c.model.vocab_size = 5
  c.train.batch_size = batch_size
  c.thinking.update(replay_buffer=True, replay_buffer_size=size, replay_buffer_groups=groups,
                    replay_buffer_sample_fraction=fraction)
  return config_lib.validate(c)


def batch(first_id, rows, config):
  """Rows whose tokens are all first_id, first_id+1, ...; logits carry the same id."""
  S, V = config.model.context_length, config.model.vocab_size
  ids = jnp.arange(first_id, first_id + rows)
  return (jnp.broadcast_to(ids[:, None], (rows, S + 1)).astype(jnp.int32),
          jnp.broadcast_to(ids[:, None, None], (rows, S, V)).astype(jnp.float32))


def push_ids(buf, first_ids, c):
  """`buf` with one batch pushed whose group g rows carry ids first_ids[g], +1, ...: the
  combined batch's final logits are the fresh rows' ids, and 0 for each replayed row."""
  task = tasks.build(c)
  G, _, b, n = replay_lib.shape(task)
  tokens, logits = zip(*(batch(first, b, c) for first in first_ids))
  final = replay_lib.append(jnp.concatenate(logits), jnp.stack([batch(0, n, c)[1]] * G), task)
  return jax.jit(functools.partial(replay_lib.push, task=task))(
      buf, jnp.concatenate(tokens), final)


def drawn_ids(buf, c, seeds=40):
  """Per group, the ids of the valid replayed rows over `seeds` draws, checking on the way
  that each draw is without replacement, fresh rows stay fresh, and each replayed row
  starts from its own record's logits."""
  task = tasks.build(c)
  G, _, b, n = replay_lib.shape(task)
  fresh = jnp.full((c.train.batch_size, c.model.context_length + 1), 99, jnp.int32)
  draw = jax.jit(lambda buf, key: replay_lib.draw(buf, fresh, key, task))
  seen, counts = [set() for _ in range(G)], set()
  for seed in range(seeds):
    out = draw(buf, jax.random.key(seed))
    (tokens, replayed), (mask, replayed_mask), (_, init) = (
        map(np.asarray, replay_lib.split(x, task))
        for x in (out.tokens[:, 0], out.row_mask, out.initial_logits[:, 0, 0]))
    assert np.all(tokens == 99) and np.all(mask == 1)
    for g in range(G):
      picked = replayed[g][replayed_mask[g] == 1]
      assert len(set(picked)) == len(picked)          # without replacement
      np.testing.assert_array_equal(init[g][replayed_mask[g] == 1], picked)
      seen[g].update(picked.tolist())
      counts.add(len(picked))
  return seen, counts


def test_replay_buffer_is_fifo_per_group_and_wraps():
  c = buffer_config()                    # 2 groups of 3 records; 2 fresh rows, 1 replayed each
  assert replay_lib.shape(tasks.build(c)) == (2, 3, 2, 1)
  assert replay_lib.depth(tasks.build(c)) == 2
  buf = push_ids(replay_lib.init(tasks.build(c)), (10, 12), c)
  assert (int(buf.pointer), int(buf.fill)) == (1, 2)
  assert drawn_ids(buf, c) == ([{10, 11}, {12, 13}], {1})
  buf = push_ids(buf, (20, 22), c)
  assert (int(buf.pointer), int(buf.fill)) == (0, 3)
  # Each lane holds one batch, its rows where the batch has them (so split as the batch).
  np.testing.assert_array_equal(buf.tokens[:, :, 0], [[10, 11, 12, 13], [20, 21, 22, 23]])
  np.testing.assert_array_equal(buf.logits[:, :, 0, 0], [[10, 11, 12, 13], [20, 21, 22, 23]])
  # The official list after adding 10, 11, 20, 21 with max size 3 holds 11, 20, 21.
  assert drawn_ids(buf, c) == ([{11, 20, 21}, {13, 22, 23}], {1})
  buf = push_ids(buf, (30, 32), c)        # wraps: the first lane is written again
  assert (int(buf.pointer), int(buf.fill)) == (1, 3)
  np.testing.assert_array_equal(buf.tokens[0, :, 0], [30, 31, 32, 33])
  assert drawn_ids(buf, c) == ([{21, 30, 31}, {23, 32, 33}], {1})


def test_step_rows_interleave_fresh_and_replayed_in_units():
  """8 fresh and 4 replayed rows a group: 4 units of 2 fresh then 1 replayed, so a group's
  rows split over 2 or 4 devices give each device its own fresh rows and whole units."""
  task = tasks.build(buffer_config(batch_size=16, groups=2, size=8))
  assert replay_lib.shape(task) == (2, 8, 8, 4)
  fresh, replayed = jnp.arange(16), 100 + jnp.arange(8).reshape(2, 4)
  rows = replay_lib.append(fresh, replayed, task)
  np.testing.assert_array_equal(rows[:12], [0, 1, 100, 2, 3, 101, 4, 5, 102, 6, 7, 103])
  np.testing.assert_array_equal(rows[12:15], [8, 9, 104])
  back = replay_lib.split(rows, task)
  np.testing.assert_array_equal(back[0], fresh)
  np.testing.assert_array_equal(back[1], replayed)


def test_more_fresh_rows_than_slots_keep_the_newest():
  c = buffer_config(batch_size=8, groups=1, size=3)     # 3 replayed rows, all of the buffer
  buf = push_ids(replay_lib.init(tasks.build(c)), (1,), c)
  assert (int(buf.pointer), int(buf.fill)) == (0, 3)
  # The official list appends 1..8 and pops the oldest: 6, 7, 8 remain.
  assert drawn_ids(buf, c) == ([{6, 7, 8}], {3})


def test_replay_draws_only_filled_records_without_replacement():
  c = buffer_config(batch_size=8, groups=2, size=5, fraction=0.75)   # 3 replayed of 4 rows
  buf = replay_lib.init(tasks.build(c))
  assert drawn_ids(buf, c, seeds=3) == ([set(), set()], {0})        # empty: nothing valid
  buf = push_ids(push_ids(buf, (1, 5), c), (11, 15), c)
  assert drawn_ids(buf, c) == ([{4, 11, 12, 13, 14}, {8, 15, 16, 17, 18}], {3})
  # Fewer filled than replayed rows (a sample fraction above 1, after one push): the newest.
  assert drawn_ids(buf._replace(fill=jnp.int32(2)), c) == ([{13, 14}, {17, 18}], {2})


def s2_program():
  c = s2_run_config()
  c.optimizer.warmup_steps = 2
  c.thinking.langevin_noise_learnable = True
  return program_lib.build(c)   # abstract only: compiles nothing until a step runs


def test_train_step_compiles_once_and_langevin_learns_after_warmup(monkeypatch):
  # One trace (so one executable) for every random step count and buffer fill.
  chex.clear_trace_counter()
  monkeypatch.setattr(step_lib, "train_step", chex.assert_max_traces(step_lib.train_step, n=1))
  program = s2_program()
  state = program.init_state()
  tokens = program.put_local(np.random.RandomState(0).randint(1, 256, (4, 17)))
  stds, replayed, steps = [], [], []
  for _ in range(5):
    stds.append(float(state.params["langevin_std"]))
    state, metrics = program.train_step(state, tokens)
    replayed.append(float(metrics["replayed_rows"]))
    steps.append(float(metrics["thinking_steps"]))
  assert replayed == [0.0, 2.0, 2.0, 2.0, 2.0]   # empty buffer first: no replay rows used
  assert set(steps) <= {2.0, 3.0}
  # Frozen during the 2 warmup updates, learned from then on (official warm_up_finished).
  assert stds[0] == stds[1] == stds[2] == 0.5 and stds[3] != 0.5
  assert optimizer_lib.param_labels(state.params, program.config)["langevin_std"] == "langevin"
  assert (int(state.replay.pointer), int(state.replay.fill)) == (1, 6)
  # The trace check is live: another batch shape would be a second trace.
  with pytest.raises(AssertionError, match="traced > 1 times"):
    program.train_step(state, program.put_local(np.ones((4, 9), np.int32)))


def test_replay_buffer_checkpoint_round_trip(tmp_path):
  program = s2_program()
  state = program.init_state()
  key = jax.random.key(0)
  replay = state.replay._replace(
      tokens=jax.random.randint(key, state.replay.tokens.shape, 0, 256),
      logits=jax.random.normal(key, state.replay.logits.shape),
      pointer=jnp.int32(1), fill=jnp.int32(6))
  state = state._replace(replay=replay)
  ckpt = Checkpointer(tmp_path)
  ckpt.save(3, state, {"position": 1})
  step, restored, _ = ckpt.restore(program.abstract_sharded_state())
  ckpt.close()
  assert step == 3
  chex.assert_trees_all_equal(restored.replay, state.replay)


@pytest.mark.slow
def test_s2_resume_with_replay_equals_uninterrupted(tmp_path):
  c = s2_run_config(num_steps=6, checkpoint_every=3, eval_every=6)
  c.optimizer.decay_steps = 6   # the same schedule (so the same program) in the shortened run
  quiet = dict(progress=False, log=lambda *a: None)
  trainer.train(c, tmp_path / "straight", **quiet)
  c.train.num_steps = 3
  trainer.train(c, tmp_path / "broken", **quiet)
  c.train.num_steps = 6
  assert trainer.train(c, tmp_path / "broken", **quiet).start_step == 3
  states = []
  for run in ("straight", "broken"):
    ckpt = Checkpointer(tmp_path / run / "checkpoints")
    states.append(ckpt.restore(program_lib.build(c).abstract_sharded_state()))
    ckpt.close()
  assert states[0][0] == states[1][0] == 6
  assert int(states[0][1].replay.fill) == 6
  chex.assert_trees_all_equal(states[0][1], states[1][1])
  losses = [{r["step"]: r["train/loss"] for r in read_metrics(tmp_path / run) if "train/loss" in r}
            for run in ("straight", "broken")]
  assert losses[0] == losses[1] and all(np.isfinite(list(losses[0].values())))


@pytest.mark.parametrize("final_only", [False, True])
def test_random_step_counts_stay_within_bounds(final_only):
  c = tiny_config("time_embed", num_steps=3, random_steps=3, random_steps_min=2,
                  random_steps_final_landscape=final_only)
  schedules = jax.jit(jax.vmap(lambda k: tasks.build(c).step_schedule(k)))
  landscapes, active = schedules(jax.random.split(jax.random.key(0), 400))
  landscapes, active = np.asarray(landscapes), np.asarray(active)
  slots = 3 + 3 if final_only else 3 * 4        # one slot per landscape, R+1 = 4 randomized
  assert active.shape == (400, slots) and active[:, -1].all()   # the last step is always taken
  for l in range(3):
    repeats = (active & (landscapes == l)).sum(1)
    if final_only and l < 2:
      assert np.all(repeats == 1)
    else:
      # randint(min=2, R+2=5): 2, 3 or 4 repeats, each drawn.
      assert set(repeats) == {2, 3, 4}
    # A landscape's skipped slots precede its taken ones.
    for row_l, row_a in zip(landscapes, active):
      taken = row_a[row_l == l]
      assert np.all(np.diff(taken.astype(int)) >= 0)
  # Validation: deterministic, the final landscape R+1 times (whatever final_only says).
  val_landscapes, val_active = tasks.build(c).step_schedule()
  np.testing.assert_array_equal(val_landscapes, [0, 1, 2, 2, 2, 2])
  assert val_active is None


@pytest.mark.slow
def test_truncation_equals_stop_gradient_on_earlier_steps_with_fixed_alpha(x64):
  # Float64: the two are equal maths computed in different orders, whose float32 rounding
  # the second-order gradients amplify past any tolerance that would still test them.
  c = tiny_config("time_embed", num_steps=2, random_steps=2, random_steps_min=1,
                  random_steps_final_landscape=True, step_size_random_scale=3.0,
                  step_size_learnable=False, truncate=True, detach=False, clamp_grad=True,
                  clamp_grad_max_change=1.5)
  c.model.n_layers = 1
  c.model.dtype = "float64"
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 1, c.model.vocab_size)
  key = jax.random.key(3)
  truncated = lambda p: text.text_ebt_loss(p, tokens, c, key=key, randomize=True)[0]

  def reference(p, cut):
    # The same draws as text_ebt_objective; every step second order, the candidate
    # entering the last step stop-gradiented (or not, to show the cut matters).
    init_key, think_key = jax.random.split(key)
    steps_key, alpha_key = jax.random.split(jax.random.fold_in(key, 1))
    task = tasks.build(c)
    y0 = task.initial_candidate(init_key, (2, 6, c.model.vocab_size))
    landscapes, active = task.step_schedule(steps_key)
    alpha = options.random_step_size(options.step_size(p, task.thinking), alpha_key, (2, 6, 1),
                                     task.thinking, task.candidate_dtype)
    energy = task.candidate_energy_fn(p, task.encode_landscapes(p, tokens[:, :-1]))
    run = functools.partial(think, energy, inner_opt=optimizers.make("gd"), key=think_key,
                            reparam=task.candidate_reparam(), detach=False,
                            grad_clip=options.grad_clip_bound(p, task.thinking))
    head = run(y0, schedule=Schedule(landscapes[:-1], alpha, active[:-1]))
    y = jax.lax.stop_gradient(head.final) if cut else head.final
    last = run(y, schedule=Schedule(landscapes[-1:], alpha))
    return text.masked_mean(text.token_nll(last.final, tokens[:, 1:]),
                            (tokens[:, 1:] != 0).astype(jnp.float32))

  g_trunc = jax.jit(jax.value_and_grad(truncated))(params)
  g_ref = jax.jit(jax.value_and_grad(lambda p: reference(p, True)))(params)
  np.testing.assert_allclose(g_trunc[0], g_ref[0], rtol=1e-12)
  chex.assert_trees_all_close(g_trunc[1], g_ref[1], rtol=1e-9, atol=1e-14)
  g_full = jax.jit(jax.grad(lambda p: reference(p, False)))(params)
  assert not np.allclose(g_full["blocks"]["wq"], g_trunc[1]["blocks"]["wq"], rtol=1e-3)


def test_contrastive_loss_on_a_hand_computed_case(x64):
  # Float64, so the loss with and without the term differ by the term to rounding.
  c = tiny_config("default", contrastive_loss=True)
  c.model.dtype = "float64"
  params = to_f64(ebt_jax.init_params(c, jax.random.key(0)))
  tokens = jnp.array([[3, 4, 0, 5]])                 # targets 4, 0 (pad), 5
  task = tasks.build(c)
  caches = task.encode_landscapes(params, tokens[:, :-1])
  mask = (tokens[:, 1:] != 0).astype(jnp.float32)
  contrastive = jax.jit(lambda p, fake: task.contrastive_loss(p, caches, tokens[:, 1:], fake,
                                                              mask))
  fake = jnp.array([[2.0, 7.0, -1.0]])
  # With a zero energy head every true energy is 0: the official cross-entropy of
  # (-E_true, -E_fake) = (0, -fake) with target 0 is log(1 + exp(-fake)), pad skipped.
  zero_head = dict(params, head=jnp.zeros_like(params["head"]))
  want = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))) / 2
  got = contrastive(zero_head, fake)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # With the real head: E_true is the energy of the one-hot true token on the final
  # landscape, and the loss is the torch cross-entropy over the pair.
  e_true = ar_ebt.prediction_energy(params, jax.tree_util.tree_map(lambda a: a[0], caches),
                                    jax.nn.one_hot(tokens[:, 1:], c.model.vocab_size), 0,
                                    task.dims)
  logits = -np.stack([np.asarray(e_true), np.asarray(fake)], -1)[0]   # [S, 2]
  ce = -(logits[:, 0] - np.log(np.exp(logits).sum(-1)))
  got = contrastive(params, fake)
  np.testing.assert_allclose(got, (ce[0] + ce[2]) / 2, rtol=1e-10)
  # In the objective: coefficient x the loss against the final step's starting energy.
  objective = lambda c: jax.jit(lambda p: text.text_ebt_loss(p, tokens, c, key=jax.random.key(1)))
  loss, metrics = objective(c)(params)
  c.thinking.contrastive_loss = False
  loss_without, _ = objective(c)(params)
  np.testing.assert_allclose(loss - loss_without, 0.0005 * metrics["contrastive_loss"],
                             rtol=1e-9)


def test_clamps_follow_the_official_definitions():
  c = tiny_config("default", clamp_grad=True, clamp_grad_max_change=6.0,
                  clamp_grad_max_change_after_warmup=2.0, step_size_learnable=False)
  params = {"alpha": jnp.asarray(3.0)}
  # max_change / alpha with the model's alpha, the after-warmup change once warmed up.
  np.testing.assert_allclose(options.grad_clip_bound(params, tasks.build(c).thinking, warmed_up=False), 2.0)
  np.testing.assert_allclose(options.grad_clip_bound(params, tasks.build(c).thinking, warmed_up=jnp.bool_(True)), 2 / 3)
  energy = lambda z, l: jnp.sum(jnp.arange(1.0, 4.0) * z ** 2, -1)   # gradient 2 k z_k
  y0 = jnp.ones((1, 1, 3))
  traj = think(energy, y0, optimizers.make("gd"), Schedule(jnp.zeros(1, jnp.int32),
                                                           jnp.asarray(1.0)),
               jax.random.key(0), grad_clip=3.0, value_clip=1.5)
  # Gradients (2, 4, 6) clamp to (2, 3, 3); candidates 1 - (2, 3, 3) clamp to [-1.5, 1.5].
  np.testing.assert_allclose(traj.final[0, 0], [-1.0, -1.5, -1.5])


def _toy_energy(theta, z, landscape):
  A, c = theta["A"], jnp.asarray(theta["c"])[landscape]
  quad = 0.5 * jnp.einsum("bsv,vw,bsw->bs", z, A @ A.T + jnp.eye(A.shape[0]), z)
  return quad + c * jnp.sum(jnp.sin(z) ** 2, -1)


INNER_OPTIMIZERS = [
    ("gd", {}), ("langevin", {"noise_std": 0.3}), ("momentum", {"beta": 0.8}),
    ("nesterov", {"beta": 0.8}), ("adam", {}),
    ("optax", {"transform": "sgd", "learning_rate": 1.0, "momentum": 0.5}),
    ("optax", {"transform": "adam", "learning_rate": 1.0, "eps_root": 1e-12}),
]


def test_every_registered_inner_optimizer_is_checked():
  registered = {n for n in optimizers.names() if not n.startswith("test_")}
  assert registered == {name for name, _ in INNER_OPTIMIZERS}


@pytest.mark.parametrize("name,kwargs", INNER_OPTIMIZERS)
def test_every_inner_optimizer_is_twice_differentiable_through_the_s2_loop(name, kwargs):
  """Per-position random step sizes, skipped steps, gradient and value clamps, Langevin
  pre-noise, no detaching: finite differences of the loss and of its gradient."""
  with jax.enable_x64(True):   # Adam's curvature needs float64 and a small FD step
    k = jax.random.split(jax.random.key(0), 4)
    theta = {"A": 0.3 * jax.random.normal(k[0], (4, 4), jnp.float64),
             "c": 0.5 + jax.random.uniform(k[1], (2,), jnp.float64),
             "alpha": jnp.asarray(0.2, jnp.float64)}
    y0 = jax.random.normal(k[2], (2, 3, 4), jnp.float64)
    scale_BxSx1 = 0.5 + jax.random.uniform(k[3], (2, 3, 1), jnp.float64)
    opt = optimizers.make(name, **kwargs)

    @jax.jit
    def loss(theta):
      schedule = Schedule(jnp.array([0, 1, 1, 1]), theta["alpha"] * scale_BxSx1,
                          jnp.array([True, False, True, True]))
      traj = think(lambda z, l: _toy_energy(theta, z, l), y0, opt, schedule,
                   jax.random.key(6), detach=False, pre_noise_std=0.1,
                   grad_clip=2.0 / theta["alpha"], value_clip=3.0)
      return jnp.sum(jnp.sin(traj.outputs)) + jnp.sum(traj.final ** 2)

    check_grads(loss, (theta,), order=2, modes=["rev"], eps=1e-5, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_training_with_a_momentum_inner_optimizer_is_second_order(x64):
  c = tiny_config("time_embed", inner_optimizer="momentum", detach=False, num_steps=2,
                  random_steps=1, step_size_random_scale=2.0)
  c.thinking.inner_optimizer_kwargs.beta = 0.7
  c.model.dtype = "float64"
  c.model.n_layers = 1
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 1, c.model.vocab_size)
  loss = jax.jit(lambda p: text.text_ebt_loss(p, tokens, c, key=jax.random.key(3),
                                              randomize=True)[0])
  grad = jax.jit(jax.grad(lambda p: text.text_ebt_loss(p, tokens, c, key=jax.random.key(3),
                                                       randomize=True)[0]))(params)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  v = [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
  norm = jnp.sqrt(sum(jnp.sum(d * d) for d in v))
  v = jax.tree_util.tree_unflatten(treedef, [d / norm for d in v])
  analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(v)))
  shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)
  central = lambda h: (loss(shift(h)) - loss(shift(-h))) / (2 * h)
  numeric = (4 * central(5e-5) - central(1e-4)) / 3
  np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
  assert float(jnp.abs(grad["alpha"])) > 0     # through momentum's update of every step


def test_ablation_overrides_in_the_cpu_config_docstring_work():
  from ebt_jax import cli
  module = {}
  exec((CONFIGS / "ebt_s2.py").read_text(), module)
  doc = module["__doc__"]
  overrides = re.findall(r"^\s+no [a-zA-Z ]+:\s+(--config\.\S+)", doc, re.M)
  assert len(overrides) == 4
  for override in overrides:
    c = module["get_config"]("cpu")
    cli.apply_overrides(c, [override])
    config_lib.validate(c)
    t = c.thinking
    if "random_steps_min" in override:
      landscapes, active = jax.vmap(lambda k: tasks.build(c).step_schedule(k))(
          jax.random.split(jax.random.key(0), 50))
      assert np.all(np.asarray(active).sum(1) == 3)
      assert len(tasks.build(c).step_schedule()[0]) == 3        # as many as validation takes
    else:
      assert (t.step_size_random_scale == 1 or t.langevin_noise == 0 or not t.replay_buffer)


# The official job_scripts/nlp/pretrain/ebt_s2.sh flags (4 GPUs per node), plus the
# tokenizer's vocabulary size.
S2_SCRIPT = {
    "run_name": "ebt-xxs-bs_256_s2_lr_0.0012", "modality": "NLP", "model_name": "ebt",
    "model_size": "xxs", "pretokenize_dataset": True, "tokenizer": "EleutherAI/gpt-neox-20b",
    "no_mcmc_detach": True, "mcmc_replay_buffer": True, "truncate_mcmc": True,
    "langevin_dynamics_noise": 3.0, "normalize_initial_condition": True,
    "ebt_type": "time_embed", "denoising_initial_condition": "random_noise",
    "mcmc_step_size": 5, "randomize_mcmc_step_size_scale": 2, "randomize_mcmc_num_steps": 2,
    "randomize_mcmc_num_steps_min": 2, "mcmc_num_steps": 1, "context_length": 256,
    "gpus": "-1", "peak_learning_rate": 0.0012, "batch_size_per_device": 32,
    "accumulate_grad_batches": 2, "gradient_clip_val": 1.0, "weight_decay": 0.01,
    "min_lr_scale": 10, "max_steps": 1000000, "max_scheduling_steps": 1000000,
    "warm_up_steps": 10000, "dataset_name": "pajama", "num_workers": 12,
    "validation_split_pct": 0.0005, "val_check_interval": 15000,
    "wandb_project": "nlp_pretrain", "log_model_archi": True, "log_gradients": True,
    "set_matmul_precision": "medium", "wandb_watch": True, "is_slurm_run": True,
    "vocab_size": 50277,
}


def test_s2_job_script_converts_to_the_xxs_config():
  converted = from_official_hparams(S2_SCRIPT, num_devices=4)
  module = {}
  exec((CONFIGS / "ebt_s2.py").read_text(), module)
  ours = module["get_config"]("xxs")
  # The accelerator configs run bfloat16 mixed precision, the script float32 (with
  # bfloat16-precision matmuls: --set_matmul_precision medium).
  assert (converted.model.dtype, ours.model.dtype) == ("float32", "bfloat16")
  converted.model.dtype = "bfloat16"
  # They also pad the vocabulary axis for tensor parallelism (masked: no value changes).
  assert (converted.model.vocab_multiple, ours.model.vocab_multiple) == (1, 128)
  converted.model.vocab_multiple = 128
  for section in ("model", "thinking", "optimizer"):
    assert converted[section].to_dict() == ours[section].to_dict(), section
  assert (converted.train.batch_size, converted.train.num_steps) == (256, 1000000)
  with pytest.raises(ConfigError, match="^bogus_flag: not an official"):
    from_official_hparams({**S2_SCRIPT, "bogus_flag": 1})
