"""Files from outside run no code, cannot exhaust memory and cannot read out of bounds.

Hostile ``torch.save`` files and CIFAR batches, crafted byte by byte: each payload would
create the file `MARKER` in the working directory if any pickle of fat_jax resolved its
global; every one must fail with one error line naming the file and leave no marker.
"""
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

from fat_jax.data import load_dataset
from fat_jax.data.sources import _read_cifar_batch
from fat_jax.formats import convert as convert_lib
from fat_jax.formats import torch_file
from tests import torch_files
from tests.fixtures import write_cifar10_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_SUBSET = '/work/shared/data/cifar-10-subset'
MARKER = 'pwned'


def _stack_global(module: str, name: str) -> bytes:
  """Protocol 4: ``module.name('touch pwned')`` through STACK_GLOBAL."""
  text = lambda s: b'\x8c' + bytes([len(s)]) + s.encode()
  return (b'\x80\x04' + text(module) + text(name) + b'\x93' + text(f'touch {MARKER}') +
          b'\x85R.')


PAYLOADS = {  # each runs `touch pwned` (or opens it) when unpickled by pickle.load
    'global_reduce_os_system': f"cos\nsystem\n(S'touch {MARKER}'\ntR.".encode(),
    'builtins_exec': f"cbuiltins\nexec\n(S'open(\"{MARKER}\", \"w\").close()'\ntR.".encode(),
    'subprocess_call': f"csubprocess\ncall\n((S'touch'\nS'{MARKER}'\nltR.".encode(),
    'subprocess_popen': f"csubprocess\nPopen\n((S'touch'\nS'{MARKER}'\nltR.".encode(),
    'posix_system': f"cposix\nsystem\n(S'touch {MARKER}'\ntR.".encode(),
    'stack_global': _stack_global('os', 'system'),
    'inst': f"(S'touch {MARKER}'\nios\nsystem\n.".encode(),
    'obj': f"(cos\nsystem\nS'touch {MARKER}'\no.".encode(),
}
CALLS = {name: 'os.system' for name in ('global_reduce_os_system', 'stack_global', 'inst', 'obj')}
CALLS.update(builtins_exec='builtins.exec', subprocess_call='subprocess.call',
             subprocess_popen='subprocess.Popen', posix_system='posix.system')
LEGACY_PARTS = ('magic', 'protocol', 'sys_info', 'object', 'storage_keys')


def _state_dict():
  return torch_files.state_dict({'w': np.arange(6, dtype=np.float32).reshape(2, 3)})


def _assert_no_marker(payload: str):
  if payload == 'subprocess_popen':
    time.sleep(0.3)  # Popen would not wait for its command
  assert not os.path.exists(MARKER)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)


def _hostile_file(position: str, payload: bytes) -> str:
  if position in LEGACY_PARTS:
    parts = torch_files.legacy_parts(_state_dict())
    parts[LEGACY_PARTS.index(position)] = payload
    with open('model.pth', 'wb') as f:
      f.write(b''.join(parts))
  elif position == 'zip_data_pkl':
    records = torch_files.zip_records(_state_dict())
    torch_files.write_zip('model.pth', {**records, 'archive/data.pkl': payload})
  else:  # a tar whose first member is named by the pickle
    with tarfile.open('model.pth', 'w', format=tarfile.GNU_FORMAT, encoding='latin1') as tar:
      tar.addfile(tarfile.TarInfo(payload.decode('latin1')))
  return 'model.pth'


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
@pytest.mark.parametrize('position', [*LEGACY_PARTS, 'zip_data_pkl', 'tar_member_name'])
def test_a_pickle_payload_in_any_position_is_refused_and_runs_nothing(position, payload):
  path = _hostile_file(position, PAYLOADS[payload])
  with pytest.raises(torch_file.TorchFileError) as error:
    torch_file.load(path)
  message = str(error.value)
  assert message.startswith(f'{path}: ') and '\n' not in message
  assert f'refused global {CALLS[payload]}: ' in message, message
  _assert_no_marker(payload)


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_a_cifar_batch_payload_is_refused_and_runs_nothing(tmp_path, payload):
  root = write_cifar10_dir(str(tmp_path / 'cifar'), n_train_per_batch=2, n_test=2)
  batch = os.path.join(root, 'cifar-10-batches-py', 'data_batch_3')
  with open(batch, 'wb') as f:
    f.write(PAYLOADS[payload])
  with pytest.raises(ValueError, match=f'^{batch}: ') as error:
    load_dataset(type('Config', (), {'name': 'cifar10', 'dir': root})())
  assert f'refused global {CALLS[payload]}: ' in str(error.value)
  assert '\n' not in str(error.value)
  _assert_no_marker(payload)


def _python2_cifar_batch(rows: np.ndarray, labels) -> bytes:
  """A CIFAR batch as Python 2's cPickle wrote the original files: protocol 2, byte strings
  (SHORT_BINSTRING, BINSTRING), numpy.core.multiarray._reconstruct."""
  text = lambda s: b'U' + bytes([len(s)]) + s
  raw = rows.tobytes()
  return (b'\x80\x02}(' + text(b'data') +
          b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85' + text(b'b') +
          b'\x87R(K\x01M' + struct.pack('<H', len(rows)) + b'M\x00\x0c\x86cnumpy\ndtype\n' +
          text(b'u1') + b'K\x00K\x01\x87R(K\x03' + text(b'|') +
          b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T' + struct.pack('<I', len(raw)) +
          raw + b'tb' + text(b'labels') + b'](' + b''.join(b'K' + bytes([y]) for y in labels) +
          b'eu.')


def test_cifar_batches_read_numeric_arrays_only(tmp_path):
  """Batches as Python 2 and numpy 1 wrote them and as numpy 2 does read as pickle reads
  them; an object array does not."""
  path = tmp_path / 'objects'
  path.write_bytes(pickle.dumps({b'data': np.array([print], dtype=object), b'labels': [0]}))
  with pytest.raises(ValueError, match=r"refused numpy dtype 'O8'"):
    _read_cifar_batch(str(path), b'labels')
  rows = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
  (tmp_path / 'py2').write_bytes(_python2_cifar_batch(rows, [3, 9, 0]))
  images, labels = _read_cifar_batch(str(tmp_path / 'py2'), b'labels')
  np.testing.assert_array_equal(images, rows.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
  assert labels.tolist() == [3, 9, 0] and labels.dtype == np.int32
  folder = os.path.join(CIFAR_SUBSET, 'cifar-10-batches-py')
  if not os.path.isdir(folder):
    pytest.skip(f'no {folder}')
  for name in ('data_batch_1', 'test_batch'):  # numpy 2 pickles through _codecs.encode
    images, labels = _read_cifar_batch(os.path.join(folder, name), b'labels')
    with open(os.path.join(folder, name), 'rb') as f:
      batch = pickle.load(f, encoding='bytes')  # a trusted file, for the reference
    np.testing.assert_array_equal(
        images, batch[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == batch[b'labels']


def _view(shape, stride, offset=0, data=(0.0,), numel=None):
  """A float32 tensor of any `shape`, `stride` and `offset` over a storage of `data` that
  declares `numel` elements."""
  data = np.asarray(data, np.float32)
  tensor = torch_files.Tensor(data, torch_files.Storage(data, numel), offset, tuple(stride))
  tensor.shape = tuple(shape)
  return {'w': tensor}


def _fails_fast(path, match, limits=torch_file.Limits()):
  """`load(path)` raises `match` within a second, having allocated under 2 MB."""
  tracemalloc.start()
  start = time.perf_counter()
  try:
    with pytest.raises(torch_file.TorchFileError, match=match):
      torch_file.load(path, limits)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert time.perf_counter() - start < 1 and peak < 2 << 20, (time.perf_counter() - start, peak)


def test_a_stride_zero_tensor_of_375m_elements_fails_fast():
  path = torch_files.save_zip(_view((375_000_000,), (0,)), 'bomb.pth')
  assert os.path.getsize(path) < 1000
  _fails_fast(path, r'declares 375000000 elements, above max_elements=268435456')


def test_a_deflated_record_declaring_a_huge_size_is_refused_before_reading():
  # The pickle declares 725 M float32 elements (2.9 GB), the record's ZipInfo as much.
  records = torch_files.zip_records(_view((4,), (1,), data=np.zeros(4), numel=725_000_000))
  torch_files.write_zip('bomb.pth', records, deflate=True)
  torch_files.declare_size('bomb.pth', 'archive/data/0', 2_900_000_000)
  _fails_fast('bomb.pth', r'storage 0 declares 725000000 elements, above max_elements')
  # A small declared storage whose record claims 2.9 GB: refused from ZipInfo.
  torch_files.write_zip('claim.pth', torch_files.zip_records(_view((4,), (1,), data=np.zeros(4))),
                        deflate=True)
  torch_files.declare_size('claim.pth', 'archive/data/0', 2_900_000_000)
  _fails_fast('claim.pth', r'archive/data/0 holds 2900000000 bytes, expected 4 elements')
  # Within max_elements but above the total: refused before the record is inflated.
  records = torch_files.zip_records(_view((2**20,), (1,), data=np.zeros(2**20)))
  torch_files.write_zip('total.pth', records, deflate=True)
  assert os.path.getsize('total.pth') < 10_000
  _fails_fast('total.pth', r'storage record archive/data/0 \(4194304 bytes\) takes the file '
                           r'past max_total_bytes=1000000',
              torch_file.Limits(max_total_bytes=1_000_000))
  assert torch_file.load('total.pth')['w'].shape == (2**20,)  # the default limits read it


@pytest.mark.parametrize('numel, match', [
    (375_000_000, r'storage \S+ declares 375000000 elements, above max_elements'),
    (100_000_000, r'declares 100000000 elements of float32 \(400000000 bytes\) where 4 bytes '
                  r'are left'),
])
def test_a_legacy_file_declaring_a_huge_storage_fails_fast(numel, match):
  path = torch_files.save_legacy(_view((1,), (1,), numel=numel), 'bomb.pth')
  assert os.path.getsize(path) < 500
  _fails_fast(path, match)


@pytest.mark.parametrize('position', ['sys_info', 'object'])
def test_a_pickle_declaring_a_huge_length_fails_fast(position):
  huge = (2**40).to_bytes(8, 'little')
  for opcode, match in ((b'\x8e', r'asks for 1099511627776 bytes where \d+ are left'),
                        (b'\x96', 'refused opcode BYTEARRAY8')):  # BINBYTES8, BYTEARRAY8
    parts = torch_files.legacy_parts(_state_dict())
    parts[LEGACY_PARTS.index(position)] = b'\x80\x05' + opcode + huge + b'.'
    with open('long.pth', 'wb') as f:
      f.write(b''.join(parts))
    _fails_fast('long.pth', match)


def test_negative_strides_offsets_and_overruns_are_refused():
  """In a subprocess: reading such a view out of bounds can crash the reader."""
  cases = {
      'stride_-2**28': _view((2, 3), (-2**28, 1), data=np.arange(6)),
      'stride_-1': _view((6,), (-1,), offset=5, data=np.arange(6)),
      'offset_-1': _view((6,), (1,), offset=-1, data=np.arange(6)),
      'past_the_end': _view((2, 3), (4, 1), data=np.arange(6)),
      'huge_stride': _view((2,), (2**62,), data=np.arange(6)),
  }
  for name, obj in cases.items():
    torch_files.save_zip(obj, f'{name}.pth')
    torch_files.save_legacy(obj, f'{name}.legacy.pth')
  script = textwrap.dedent('''
      import sys
      from fat_jax.formats import torch_file
      for path in sys.argv[1:]:
        try:
          torch_file.load(path)
          print(path, 'loaded', flush=True)
        except torch_file.TorchFileError as e:
          print(path, 'refused', e, flush=True)
  ''')
  paths = sorted(p for p in os.listdir('.') if p.endswith('.pth'))
  done = subprocess.run([sys.executable, '-c', script, *paths], capture_output=True, text=True,
                        timeout=60, env={**os.environ, 'PYTHONPATH': ROOT})
  lines = done.stdout.splitlines()
  assert done.returncode == 0 and len(lines) == len(paths), (done.returncode, done.stderr)
  for path, line in zip(paths, lines):
    assert line.startswith(f'{path} refused {path}: a tensor of size'), line
    assert 'must be ints >= 0' in line or 'overruns its storage' in line, line


def test_the_object_pickle_keeps_inert_stand_ins_and_refuses_the_rest():
  import argparse  # pylint: disable=import-outside-toplevel
  state = _state_dict()
  path = torch_files.save_zip({'state_dict': state, 'args': argparse.Namespace(lr=0.1)},
                              'ckpt.pth')
  loaded = torch_file.load(path)
  assert isinstance(loaded['args'], torch_file.Opaque) and loaded['args'].state == {'lr': 0.1}
  np.testing.assert_array_equal(loaded['state_dict']['w'], np.arange(6).reshape(2, 3))
  # BUILD that would shadow an OrderedDict's method, BUILD on a resolved global.
  builds = {b"ccollections\nOrderedDict\n)R}(S'items'\nI1\nub.":
                "refused state {'items': 1} of an OrderedDict",
            b'ctorch._utils\n_rebuild_parameter\n}b.': 'refused BUILD on a function',
            b'ctorch\nFloatStorage\n}b.': 'refused BUILD on a _StorageType'}
  for data, message in builds.items():
    torch_files.write_zip('build.pth', {**torch_files.zip_records(state),
                                        'archive/data.pkl': data})
    with pytest.raises(torch_file.TorchFileError, match=message):
      torch_file.load('build.pth')


def test_convert_prints_one_line_for_bad_files(tmp_path, capsys):
  path = torch_files.save_zip(_state_dict(), 'model.pth')
  data = open(path, 'rb').read()
  open('truncated.pth', 'wb').write(data[:len(data) // 2])
  open('bad.pth', 'wb').write(b'PK\x03\x04' + b'\0' * 100)
  _hostile_file('zip_data_pkl', PAYLOADS['global_reduce_os_system'])
  expected = {'truncated.pth': 'not a readable zip archive',
              'bad.pth': 'not a readable zip archive',
              'model.pth': 'refused global os.system'}
  for name, message in expected.items():
    assert convert_lib.main([name, f'--workdir={tmp_path / name}']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'fat-jax-convert: error: {name}: ') and message in err, err
    assert err.count('\n') == 1, err
  torch_files.save_zip(_state_dict(), 'big.pth')
  assert convert_lib.main(['big.pth', '--workdir=run', '--max-elements=5']) == 2
  err = capsys.readouterr().err
  assert 'declares 6 elements, above max_elements=5' in err and err.count('\n') == 1, err
  _assert_no_marker('global_reduce_os_system')
