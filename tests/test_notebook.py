"""docs/notebooks/quickstart.ipynb: stored without outputs, every code cell valid Python, and (slow)
executed top to bottom by a Jupyter kernel (nbclient): it trains N-FGSM + LAP in its own optax
loop, evaluates with AutoAttack and draws its two figures."""
import json
import os

import pytest

from fat_jax.data import FASHION_MNIST_DEBIAN_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'docs', 'notebooks', 'quickstart.ipynb')


def code_cells() -> list[str]:
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4 and notebook['metadata']['kernelspec']['name'] == 'python3'
  cells = [c for c in notebook['cells'] if c['cell_type'] == 'code']
  assert all(c['outputs'] == [] and c['execution_count'] is None for c in cells), (
      'the notebook is stored with outputs: clear them before committing')
  return [''.join(c['source']) for c in cells]


def test_the_notebook_is_stored_without_outputs_and_its_code_compiles():
  sources = code_cells()
  assert len(sources) >= 5
  for i, source in enumerate(sources):
    compile(source, f'{NOTEBOOK}, code cell {i}', 'exec')  # no shell or magic lines either


@pytest.mark.slow  # 128 training steps and AutoAttack on 64 points: ~65 s of CPU time
@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEBIAN_DIR),
                    reason='needs apt-get install dataset-fashion-mnist')
def test_the_notebook_runs_top_to_bottom(tmp_path):
  import nbclient  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'epoch 2: loss' in text and 'suite aa_standard' in text
  assert 'check validity        pass' in text  # AutoAttack's examples are valid
  figures = [o for o in outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(figures) == 2
  assert os.listdir(tmp_path) == []  # the notebook writes no file
