"""The look of every PNG that fat_jax's reports write: one resolution, readable font sizes,
and matplotlib's constrained layout, which keeps titles, labels, colour bars and figure
legends (``loc='outside ...'``) inside the canvas. Object API only: no pyplot, no global
rcParams change."""
from __future__ import annotations

import textwrap

from matplotlib.figure import Figure

DPI = 150
TITLE_PT = 9   # panel titles, suptitles
TEXT_PT = 8    # legends, axis labels, colour-bar labels, small annotations
TICK_PT = 7    # tick labels of dense panel grids


def new_figure(width: float, height: float) -> Figure:
  """A `width` × `height` inch figure with constrained layout."""
  return Figure(figsize=(width, height), layout='constrained')


def wrap(text: str, width: int) -> str:
  """`text` broken into lines of at most `width` characters (a title that fits its panel)."""
  return '\n'.join(textwrap.wrap(text, width, break_long_words=False)) or text


def save(fig: Figure, path: str) -> str:
  """Writes `fig` to `path` at `DPI`; returns `path`."""
  fig.savefig(path, dpi=DPI)
  return path
