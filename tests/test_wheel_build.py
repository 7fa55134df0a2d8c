"""setup.py's wheel build: from an empty ``build/lib`` (a module left there by an earlier build,
or deleted from the source since, does not ship), leaving no ``build/`` folder in the clone."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # pip builds the wheel twice in a copy of the clone (~10 s each)
def test_a_wheel_ships_only_the_current_modules_and_leaves_no_build_folder(tmp_path):
  src = tmp_path / 'src'
  files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split('\n')
  for f in filter(None, files):
    if os.path.isfile(os.path.join(ROOT, f)):
      os.makedirs(src / os.path.dirname(f), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, f), src / f)
  (src / 'fat_jax' / 'renamed_since.py').write_text('X = 1\n')

  def wheel_modules(out: str) -> set[str]:
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w',
                    str(tmp_path / out), str(src)], check=True, timeout=300)
    [wheel] = os.listdir(tmp_path / out)
    with zipfile.ZipFile(tmp_path / out / wheel) as z:
      return {n for n in z.namelist() if n.startswith('fat_jax/')}

  assert 'fat_jax/renamed_since.py' in wheel_modules('first')
  assert not (src / 'build').exists()
  os.remove(src / 'fat_jax' / 'renamed_since.py')
  # A build/lib as setuptools leaves it when the build is not setup.py's (an older clone).
  os.makedirs(src / 'build' / 'lib' / 'fat_jax')
  (src / 'build' / 'lib' / 'fat_jax' / 'stale.py').write_text('X = 1\n')
  second = wheel_modules('second')
  assert 'fat_jax/renamed_since.py' not in second and 'fat_jax/stale.py' not in second
  assert 'fat_jax/run/train.py' in second and 'fat_jax/configs/quickstart.py' in second
  assert not (src / 'build').exists()
