"""docs/library.md's Python example runs as written (its python blocks, in order, in one
namespace): the composed N-FGSM + AAER + LAP method takes a step with an optax AdamW, and the
logged lr is the one the optimiser's state holds."""
import contextlib
import io
import os
import re

import numpy as np

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                   'library.md')


def test_composing_a_method_in_python_runs_as_written():
  with open(DOC) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'docs/library.md has no python example'
  out, namespace = io.StringIO(), {}
  with contextlib.redirect_stdout(out):
    for block in blocks:
      exec(compile(block, DOC, 'exec'), namespace)  # pylint: disable=exec-used
  ts, metrics, method = namespace['ts'], namespace['metrics'], namespace['method']
  assert int(ts.step) == 1 and np.isfinite(float(metrics['loss']))
  assert {'aaer_aae_fraction', 'lap_norm'} <= set(metrics)  # the components' statistics
  assert method.weights is not None and namespace['pgd_ga'].attack.steps == 10
  # The lr of the step taken: the cosine decay's value at count 0, as the state holds it.
  state_lr = float(ts.opt_state.hyperparams['learning_rate'])
  assert float(metrics['lr']) == state_lr == np.float32(1e-3)
  assert float(metrics['momentum']) == np.float32(0.9)  # AdamW's b1
  assert f"lr {state_lr:.2e}" in out.getvalue()
