"""setuptools' entry point; the project is described in pyproject.toml. One change: a wheel
(``pip install .``, ``pip wheel .``, ``python -m build``) is built from an empty ``build/lib``
and the build folder is removed afterwards. setuptools fills ``build/lib`` but never empties
it (pypa/setuptools#1871), so without this a module deleted or renamed since an earlier build
would still ship in the wheel, and the clone would keep a ``build/`` folder
(tests/test_wheel_build.py checks both)."""
import os
import shutil

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel


class FreshBdistWheel(bdist_wheel):
  """`bdist_wheel` from a fresh ``build/lib``, leaving no build folder behind."""

  def run(self):
    build = self.get_finalized_command('build')
    if not self.skip_build:
      shutil.rmtree(build.build_lib, ignore_errors=True)
    try:
      super().run()
    finally:
      shutil.rmtree(build.build_lib, ignore_errors=True)
      for folder in (os.path.dirname(self.bdist_dir), build.build_base):
        if os.path.isdir(folder) and not os.listdir(folder):
          os.rmdir(folder)


setup(cmdclass={'bdist_wheel': FreshBdistWheel})
