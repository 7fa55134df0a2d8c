"""The README's Python examples run as written (in order, sharing one namespace)."""
import contextlib
import io
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def test_readme_python_example_runs():
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python example'
  out, namespace = io.StringIO(), {}
  with contextlib.redirect_stdout(out):
    for block in blocks:
      exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  lines = out.getvalue().splitlines()
  assert lines[0].startswith('robust accuracy') and lines[1].startswith('AAE fraction')
  assert lines[2].startswith('aa_standard robust accuracy') and "'validity': 'pass'" in lines[3]
