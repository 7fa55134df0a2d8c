"""The documentation points only at what exists: every relative link of README.md and docs/*.md
names an existing file (without an anchor), every `docs/....md` cited in code, configs, scripts,
tests or docs exists, nothing cites a guide outside the repository, and the README stays short."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
DOC_PATH = re.compile(r'docs/\w[\w./-]*?\.md')
SOURCES = ('*.py', 'fat_jax/**/*.py', 'configs/*.py', 'tests/*.py', 'scripts/*', 'benchmarks/*',
           '*.md', 'docs/*.md', '*.toml', '*.cff')


def read(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return f.read()


def source_files():
  paths = set()
  for pattern in SOURCES:
    paths.update(p for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
                 if os.path.isfile(p))
  return sorted(os.path.relpath(p, ROOT) for p in paths)


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_point_to_existing_files(page):
  missing = []
  for target in LINK.findall(read(page)):
    if re.match(r'[a-z][a-z0-9+.-]*:', target):
      continue  # a URL (http:, mailto:)
    if '#' in target:  # headings change without notice: link to the page
      missing.append(f'{target} (an anchor)')
    elif not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))):
      missing.append(target)
  assert not missing, f'{page} links to missing files: {missing}'


def test_cited_doc_paths_exist():
  missing = {}
  for path in source_files():
    cited = {c for c in DOC_PATH.findall(read(path)) if not os.path.exists(os.path.join(ROOT, c))}
    if cited:
      missing[path] = sorted(cited)
  assert not missing, f'cited docs that do not exist: {missing}'


def test_no_reference_to_the_external_spec():
  citing = [path for path in source_files() if path != 'tests/test_docs.py'
            and re.search(r'\bSPEC\b', read(path))]
  assert not citing, (f'{citing} cite "SPEC", a guide outside the repository: cite '
                      'docs/protocol.md (its numbered sections) instead')


def test_readme_is_short():
  assert len(read('README.md').splitlines()) <= 250
