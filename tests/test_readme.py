"""The README's Python example runs as written."""
import contextlib
import io
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def test_readme_python_example_runs():
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python example'
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(blocks[0], 'README.md', 'exec'), {})  # pylint: disable=exec-used
  assert out.getvalue().startswith('robust accuracy')
