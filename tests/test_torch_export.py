"""fat_jax weights → PyTorch (`benchmarks/torch_models.state_dict_from_flax`, the inverse of
`fat_jax.formats.convert`'s key table): the exported ``state_dict`` loads strictly into the
PyTorch network, its logits are the fat_jax model's, and ``convert`` of the saved file gives
back the same parameters and BatchNorm statistics bit for bit. Skipped without PyTorch."""
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from fat_jax.data import DATASET_INFOS  # noqa: E402
from fat_jax.formats.convert import convert  # noqa: E402
from fat_jax.models import build_model  # noqa: E402
from fat_jax.run.runs import Run  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import torch_models  # noqa: E402  pylint: disable=wrong-import-position

# model name → (its fat_jax.formats.convert source, data set, model config, PyTorch network).
CASES = {
    'preact_resnet18': ('locuslab', 'cifar10',
                        dict(name='preact_resnet18', width=2, head_bn_relu=True),
                        lambda: torch_models.preact_resnet18(2)),
    'mnist_net': ('locuslab_mnist', 'mnist', dict(name='mnist_net', normalize=False),
                  torch_models.mnist_net),
}


def _random_weights(model, seed):
  """A fresh init with BatchNorm scales, biases and running statistics drawn at random (a fresh
  one has 1, 0, 0, 1 everywhere, which a swapped mean/var would not reveal)."""
  params, stats = model.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if name in ('mean', 'scale') or (name == 'bias' and leaf.ndim == 1):
      return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)
    return np.asarray(leaf)
  return (jax.tree_util.tree_map_with_path(draw, params),
          jax.tree_util.tree_map_with_path(draw, stats))


@pytest.mark.parametrize('name', sorted(CASES))
def test_export_round_trip_and_logits(tmp_path, name):
  source, dataset, config, torch_net = CASES[name]
  info, config = DATASET_INFOS[dataset], ml_collections.ConfigDict(config)
  model = build_model(config, info)
  params, stats = _random_weights(model, seed=1)

  net = torch_net()
  net.load_state_dict(torch_models.state_dict_from_flax(params, stats, config, info.image_shape))
  path = str(tmp_path / 'model.pth')
  torch.save(net.state_dict(), path)
  workdir = convert(path, str(tmp_path / 'run'), source=source, dataset=dataset)
  _, ts, _ = Run.open(workdir).restore(info=info)
  for ours, back in ((params, ts.params), (stats, ts.batch_stats)):
    assert jax.tree.structure(ours) == jax.tree.structure(back)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(back)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  x = np.random.default_rng(2).uniform(size=(4, *info.image_shape)).astype(np.float32)
  mean, std = model.module.mean, model.module.std
  reference = (torch_models.Normalized(net, mean, std) if mean else net).eval()
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  ours = np.asarray(model.apply(params, stats, x, False)[0])
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * max(1.0, np.abs(ours).max()))


def test_export_refuses_weights_of_another_network():
  _, dataset, config, _ = CASES['mnist_net']
  info, config = DATASET_INFOS[dataset], ml_collections.ConfigDict(config)
  params, stats = build_model(config, info).init(jax.random.key(0))
  params = {**params, 'extra': {'kernel': np.zeros((3, 3), np.float32)}}
  with pytest.raises(ValueError, match='holds 8 of the model\'s 9 tensors'):
    torch_models.state_dict_from_flax(params, stats, config, info.image_shape)
