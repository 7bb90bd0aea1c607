"""`ebt think`: per-token energies of a text as the model thinks about it (uncertainty).

An EBT's energy after thinking is its own verdict on a prediction: a high final energy,
or one that thinking could barely lower, marks a token the model is unsure of. For every
position of the text this reports the final energy of the chosen candidate, its drop
(initial minus final), the thinking steps used and the probability the final candidate
gives the actual next token; the PNG heat map shows the energy after every thinking step
(rows) of every token (columns).

A `time_embed`/`adaln` model thinks in a different energy landscape at each trained step
(the context is encoded once per landscape). Energies of different landscapes are not on
one scale, so a prediction's energy may rise where the landscape changes although the
step lowered it within its own landscape: expected, and marked in the heat map and the
table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from ebt_jax import atomic  # noqa: E402
from ebt_jax.errors import check  # noqa: E402
from ebt_jax.data.tokenizers import make_tokenizer  # noqa: E402
from ebt_jax.inference import system2  # noqa: E402
from ebt_jax.tasks.text import perplexity  # noqa: E402
from ebt_jax.training import runs  # noqa: E402


@dataclasses.dataclass
class TokenEnergies:
  tokens: list[str]              # the text's tokens, printable
  energies: np.ndarray           # [K+1, S] energy of the chosen candidate after k steps
  steps_used: np.ndarray         # [S]
  next_token_prob: np.ndarray    # [S-1] final probability of the actual next token
  predicted: list[str]           # [S] the final candidate's most likely token
  dropped: int = 0               # leading tokens cut to fit the model's context
  landscapes: np.ndarray | None = None  # [K+1] energy landscape each row was measured in
  evaluations: int | None = None  # energy evaluations (forward + gradient) per token

  @property
  def landscape_changes(self) -> list[int]:
    """Rows k (steps taken) measured in another landscape than row k - 1."""
    if self.landscapes is None:
      return []
    lands = np.asarray(self.landscapes)
    return [int(k) for k in np.flatnonzero(lands[1:] != lands[:-1]) + 1]

  @property
  def final_energy(self) -> np.ndarray:
    return self.energies[-1]

  @property
  def energy_drop(self) -> np.ndarray:
    return self.energies[0] - self.energies[-1]

  def table(self) -> str:
    lines = [f"(the first {self.dropped} tokens are cut: the model's context is "
             f"{len(self.tokens)})"] if self.dropped else []
    lines += [f"{'pos':>4} {'token':<8} {'next':<8} {'predicted':<10}{'final E':>10}"
             f"{'drop':>10}{'steps':>7}{'p(next)':>10}"]
    for s, token in enumerate(self.tokens):
      nxt = self.tokens[s + 1] if s + 1 < len(self.tokens) else ""
      prob = f"{self.next_token_prob[s]:10.4f}" if s < len(self.next_token_prob) else f"{'':>10}"
      lines.append(f"{s:>4} {token:<8} {nxt:<8} {self.predicted[s]:<10}"
                   f"{self.final_energy[s]:>10.4g}{self.energy_drop[s]:>10.4g}"
                   f"{int(self.steps_used[s]):>7}{prob}")
    if len(self.next_token_prob):
      ce = -float(np.mean(np.log(np.maximum(self.next_token_prob, 1e-30))))
      lines.append(f"perplexity of the text after thinking: {perplexity(ce):.4g}")
    if self.evaluations:
      lines.append(f"thinking cost: {self.evaluations} energy evaluations (forward + "
                   f"gradient) per token")
    if self.landscape_changes:
      after = ", ".join(str(k) for k in self.landscape_changes)
      lines.append(f"energy landscape changes after {after} step"
                   f"{'s' if after != '1' else ''} (each trained thinking step has its own "
                   "landscape): an energy may rise there, which is expected")
    return "\n".join(lines)

  def heatmap(self, path) -> Path:
    """Left: the heat map, energy after k steps (rows) of each token's prediction (columns).
    Right: each prediction's energy against steps taken (grey), their mean (black). Dashed
    lines mark where the energy landscape changes, with a caption that a rise there is
    expected."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    K1, S = self.energies.shape
    changes = self.landscape_changes
    fig, (ax, curve) = plt.subplots(
        1, 2, figsize=(max(6.0, 0.32 * S + 2) + 3.2, 0.45 * K1 + 2.6 + 0.3 * bool(changes)),
        gridspec_kw={"width_ratios": [max(6.0, 0.32 * S + 2), 3.2]})
    image = ax.imshow(self.energies, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(S), self.tokens, fontsize=7, family="monospace")
    ax.set_yticks(range(K1), [f"{k}" for k in range(K1)])
    ax.set_xlabel("token (energy of the prediction of the token after it)")
    ax.set_ylabel("thinking steps taken")
    ax.set_title("Energy of each prediction over thinking")
    fig.colorbar(image, ax=ax, label="energy")
    steps = np.arange(K1)
    curve.plot(steps, self.energies, color="0.75", linewidth=0.6)
    curve.plot(steps, self.energies.mean(axis=1), color="black", marker="o", label="mean")
    curve.set_xticks(steps)
    curve.set_xlabel("thinking steps taken")
    curve.set_ylabel("energy")
    curve.set_title("Energy over thinking steps")
    for i, k in enumerate(changes):   # between the rows (steps) of two landscapes
      label = "energy landscape changes" if i == 0 else None
      ax.axhline(k - 0.5, color="white", linestyle="--", linewidth=1.2, label=label)
      curve.axvline(k - 0.5, color="tab:red", linestyle="--", linewidth=1.2, label=label)
    curve.legend(fontsize=7)
    if changes:
      fig.text(0.01, 0.01, "Dashed lines: the energy landscape changes (each trained thinking "
               "step has its own landscape).\nEnergies of two landscapes are not on one "
               "scale, so an energy may rise there: this is expected.", fontsize=8)
    fig.tight_layout(rect=(0, 0.1 if changes else 0, 1, 1))
    atomic.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _printable(text: str) -> str:
  """Escaped, spaces shown as U+2423, at most 8 characters (table and tick labels)."""
  return text.encode("unicode_escape").decode("ascii").replace(" ", "\u2423")[:8] or "''"


def think_about_text(workdir, text: str, *, overrides=None, seed: int = 0) -> TokenEnergies:
  """Thinks about the next token after every position of `text` with a run's model."""
  task, _, params = runs.restore_ebt(workdir, overrides)
  config = task.config
  tokenizer = make_tokenizer(config.data)
  ids = np.asarray(tokenizer.encode(text), np.int32)
  check(len(ids) >= 1, "--text", "a text of at least one token", text)
  dropped = max(0, len(ids) - config.model.context_length)
  ids = ids[dropped:]
  # system2.predict's computation, keeping the chosen candidate and steps per position.
  thought = jax.jit(lambda p, x, k: system2.think_tokens(p, x, task, k))(
      params, ids[None], jax.random.key(seed))
  thought = jax.device_get(thought)
  choice = thought.choice[0]
  energies = np.take_along_axis(thought.energies[:, :, 0], choice[None, None], axis=1)[:, 0]
  probs = np.asarray(jax.nn.softmax(thought.logits[0], axis=-1))
  tokens = [_printable(tokenizer.decode([int(i)])) for i in ids]
  return TokenEnergies(
      landscapes=system2.landscapes(task),
      evaluations=system2.energy_evaluations(task, None, config.inference.best_of),
      tokens=tokens, energies=energies, steps_used=thought.steps_used[0],
      next_token_prob=probs[np.arange(len(ids) - 1), ids[1:]],
      predicted=[_printable(tokenizer.decode([int(i)])) for i in probs.argmax(-1)],
      dropped=dropped)
