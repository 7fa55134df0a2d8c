"""The README's Python example runs as written (its python blocks, in order, in one namespace):
the user's own Flax model trained with fat_jax's N-FGSM, LAP and AAER learns the toy task, and
`evaluate` on the trained f(x) -> logits prints and returns a consistent report."""
import contextlib
import io
import os
import re

from fat_jax.evaluate import format_table

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def python_blocks():
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


def test_readme_example_is_at_most_40_lines():
  blocks = python_blocks()
  assert blocks, 'README has no python example'
  assert sum(len(b.splitlines()) for b in blocks) <= 40


def test_readme_example_trains_and_evaluates():
  out, namespace = io.StringIO(), {}
  with contextlib.redirect_stdout(out):
    for block in python_blocks():
      exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  losses, report = namespace['losses'], namespace['report']
  assert len(losses) == 20 and losses[-1] < 0.8 * losses[0]  # adversarial loss falls
  assert report['clean_accuracy'] >= 0.9  # the toy task is learnt under N-FGSM + AAER + LAP
  assert 0.0 <= report['robust_accuracy'] <= report['clean_accuracy']
  assert report['suite'] == 'pgd' and report['n'] == 256
  assert {name: check['status'] for name, check in report['checks'].items()
          if name in ('validity', 'reevaluation', 'logits', 'determinism')} == dict.fromkeys(
              ('validity', 'reevaluation', 'logits', 'determinism'), 'pass')
  printed = out.getvalue()
  assert f'adversarial training loss {losses[0]:.3f} -> {losses[-1]:.3f}' in printed
  assert format_table(report) in printed  # evaluate printed its table itself
