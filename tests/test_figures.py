"""Every figure a report writes reads at a glance: rendered at ≥ 120 dpi, with every legend,
title, label and tick label inside the canvas (matplotlib's tight bounding box within the
figure's) and no text smaller than MIN_FONT_PT. Runs on tiny real runs: the report's own
fixture pattern (tests/test_report.py) with V_act records and 1-D and 2-D layer-wise
landscapes, so that the report draws each of its figures."""
import os
import shutil

import matplotlib.figure
import matplotlib.text
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from fat_jax.analysis import landscape

from fat_jax.reports import report

from fat_jax.run import run_log
from fat_jax.run.train import train_and_evaluate
from tests.fixtures import write_idx_dir
from tests.test_train import tiny_config

pytestmark = pytest.mark.slow  # trains the runs whose every figure it renders

MIN_DPI = 120
MIN_FONT_PT = 7
# folder/file: the report of one run, the report of both runs, the landscapes of the second.
FIGURES = {
    'single/accuracy.png', 'single/schedule.png', 'single/aaer.png', 'single/lap_norms.png',
    'single/gradalign.png', 'single/vact.png', 'single/fosc.png',
    'pair/accuracy.png', 'pair/comparison.png', 'pair/schedule.png', 'pair/aaer.png',
    'pair/lap_norms.png', 'pair/vact.png', 'pair/fosc.png', 'pair/gradalign.png', 'pair/adversarial_composed.png',
    'pair/adversarial_with_vact.png',
    'with_vact/landscape_1d.png', 'with_vact/landscape_2d.png'}


@pytest.fixture(scope='module')
def saved_figures(tmp_path_factory):
  """(figure, path) of every figure saved while drawing the landscapes and the reports of one
  and of two tiny runs (N-FGSM + LAP + AAER + GradAlign; the second also with V_act records)."""
  root = tmp_path_factory.mktemp('figures')
  data_dir = write_idx_dir(str(root / 'fmnist'), n_train=64, n_test=16)
  config = tiny_config(data_dir, method='lap', **{
      'method.lap.beta': 0.01, 'method.aaer.lambda1': 1.0, 'method.aaer.lambda2': 1.5,
      'method.aaer.lambda3': 0.15, 'method.gradalign.lam': 0.2})
  workdir = str(root / 'runs' / 'composed')
  train_and_evaluate(config, workdir)
  other = str(root / 'runs' / 'with_vact')
  shutil.copytree(workdir, other)
  records = run_log.read_records(other)
  os.remove(os.path.join(other, run_log.METRICS))
  for i, record in enumerate(records):
    run_log.append_record(other, {**record, 'vact': {'A': 0.1 * (i + 1), 'B': 0.2 * (i + 1)}})

  saved, real_savefig = [], matplotlib.figure.Figure.savefig

  def savefig(fig, path, *args, **kwargs):
    real_savefig(fig, path, *args, **kwargs)
    saved.append((fig, str(path)))

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(matplotlib.figure.Figure, 'savefig', savefig)
    for dims in (1, 2):
      scape = landscape.compute_landscape(other, epochs=[1, 2], dims=dims, layers=[1, 3],
                                          radius=0.5, points=3, n=8)
      landscape.plot_landscape(scape, os.path.join(other, f'landscape_{dims}d.png'))
    report.write_report([workdir], str(root / 'single'), examples=False)
    report.write_report([workdir, other], str(root / 'pair'))
  return saved


def figure_name(path: str) -> str:
  return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def test_the_report_draws_every_figure(saved_figures):
  assert {figure_name(path) for _, path in saved_figures} == FIGURES


@pytest.mark.parametrize('name', sorted(FIGURES))
def test_figure_is_sharp_and_everything_is_inside_the_canvas(saved_figures, name):
  fig, path = next((f, p) for f, p in saved_figures if figure_name(p) == name)
  width_px, height_px = Image.open(path).size
  assert width_px / fig.get_figwidth() >= MIN_DPI - 0.5, name
  assert height_px / fig.get_figheight() >= MIN_DPI - 0.5, name

  fig.set_dpi(width_px / fig.get_figwidth())  # lay out and draw as in the PNG
  agg = FigureCanvasAgg(fig)
  agg.draw()
  renderer = agg.get_renderer()
  canvas = fig.bbox  # display units (pixels at the figure's dpi)
  tol = 1.0  # pixel
  def inside(box):
    return (box.x0 >= canvas.x0 - tol and box.y0 >= canvas.y0 - tol and
            box.x1 <= canvas.x1 + tol and box.y1 <= canvas.y1 + tol)

  tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
  assert inside(tight), (name, tight.bounds, canvas.bounds)
  legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  for legend in legends:
    assert inside(legend.get_window_extent(renderer)), (name, 'legend')
  for text in fig.findobj(matplotlib.text.Text):
    if text.get_visible() and text.get_text().strip():
      assert text.get_fontsize() >= MIN_FONT_PT, (name, text.get_text(), text.get_fontsize())


@pytest.mark.parametrize('name', sorted(FIGURES))
def test_every_panel_names_its_axes(saved_figures, name):
  """Each panel with tick labels has an x and a y label, its own or that of a panel sharing the
  axis (a grid labels its outer row and column); colour bars carry their own label."""
  fig = next(f for f, p in saved_figures if figure_name(p) == name)
  for ax in fig.axes:
    if not ax.get_visible() or getattr(ax, '_colorbar', None) is not None:
      continue
    for axis in ('x', 'y'):
      if not len(getattr(ax, f'get_{axis}ticks')()):
        continue  # an image panel
      siblings = getattr(ax, f'get_shared_{axis}_axes')().get_siblings(ax)
      assert any(getattr(a, f'get_{axis}label')().strip() for a in siblings), (
          name, ax.get_title(), axis)


MAX_WIDTH_IN = 7.5  # a page's width: wider figures are shrunk, and their text with them


@pytest.mark.parametrize('name', sorted(n for n in FIGURES if 'landscape' not in n))
def test_report_figures_fit_a_page_width(saved_figures, name):
  fig = next(f for f, p in saved_figures if figure_name(p) == name)
  assert fig.get_figwidth() <= MAX_WIDTH_IN, (name, fig.get_figwidth())
