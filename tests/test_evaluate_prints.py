"""`evaluate()` returns its report and prints its result table where a script's user looks
(stdout), once, even with fat_jax's logging at INFO (as `launch.py --mode=eval` sets it);
`verbose=False` prints nothing and leaves the table to the log."""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.evaluate import evaluate, format_table

KW = dict(suite='pgd', eps=0.1, pgd_steps=2, pgd_restarts=1, batch_size=16, checks=False,
          progress=False)


def linear_logits(x):
  w = jnp.linspace(-1.0, 1.0, x[0].size * 3).reshape(x[0].size, 3)
  return x.reshape(len(x), -1) @ w


def points():
  x = np.asarray(jax.random.uniform(jax.random.key(0), (16, 4, 4, 1)))
  return x, np.asarray(linear_logits(x).argmax(-1))  # every point clean-correct


def test_evaluate_prints_its_table_once_and_returns_the_report(capsys, caplog):
  x, y = points()
  with caplog.at_level(logging.INFO, logger='fat_jax'):
    report = evaluate(linear_logits, x=x, y=y, **KW)
  out = capsys.readouterr().out
  assert report['clean_accuracy'] == 1.0
  assert format_table(report) in out
  assert out.count('robust accuracy') == 1
  assert 'robust accuracy' not in caplog.text  # not also through logging: once in all


def test_verbose_false_prints_nothing_and_logs_the_table(capsys, caplog):
  x, y = points()
  with caplog.at_level(logging.INFO, logger='fat_jax'):
    report = evaluate(linear_logits, x=x, y=y, verbose=False, **KW)
  assert capsys.readouterr().out == ''
  assert format_table(report) in caplog.text
