"""The launcher: ``fat-jax-train`` (installed) or ``python launch.py`` (checkout).

  fat-jax-train --config=configs/quickstart.py --workdir=/tmp/quickstart
  fat-jax-train --config=configs/fgsm_rs_eps8.py --workdir=runs/fgsm_rs \\
      --config.data.dir=/data/cifar10 --config.num_epochs=15
  fat-jax-train --config=configs/fgsm_rs_eps8.py --workdir=runs/fgsm_rs --mode=eval \\
      --config.eval.suite=aa_standard --config.eval.n=1000
  fat-jax-train --config=configs/fd.py --workdir=runs/fd --mode=analyze
  fat-jax-train --config=configs/fd.py --workdir=runs/fd --mode=noise_eval \\
      --config.eval.input_noise=0.0627
  fat-jax-train --config=configs/lap_eps8.py:r --mode=print_config

``--config.<field>=<value>`` overrides any field; the configs are locked, so a
misspelt field is an error. ``--mode=print_config`` prints the fields and their values (no
--workdir needed); ``--help`` lists the recipes shipped, ``--helpfull`` every flag, JAX's and
the libraries' too. Errors print one line (``--traceback`` shows the full one), those in the
flags and the config file too; the tracebacks the libraries log meanwhile (orbax's
background threads on a full disk) go to ``WORKDIR/errors.log`` (`fat_jax.errors`).
The checkpoint modes (eval, robustness, analyze, noise_eval) refuse a config that contradicts
the run's config.json (model, data, method, ε). ``--config=configs/NAME.py`` is the file in the
current folder when it exists (a checkout), else the recipe shipped in the
package (`fat_jax.configs`, the repository's configs/ folder).
"""
import ast
import difflib
import logging
import os
import re
import sys
import textwrap
import traceback

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fat_jax.errors import (LAUNCHER, TracebackLog, chain, command_name, message, one_line,
                            storage_error)
from fat_jax.analysis.evaluators import EVALUATORS
from fat_jax.config import RENAMED
from fat_jax.evaluate import SUITES
from fat_jax.parallel import cpu_device_count, initialize_distributed, is_writer, split_cpu_cores
from fat_jax.reports.report import write_end_of_run_report
from fat_jax.reports.summary import run_summary
from fat_jax.run.run_config import check_against_run
from fat_jax.run.runs import Run
from fat_jax.run.train import train_and_evaluate
from fat_jax.validation import ConfigError, validate_config

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Recipe file in configs/.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_MODE = flags.DEFINE_enum('mode', 'train',
                          ['train', *EVALUATORS, 'print_config'],
                          'train: train (resuming from --workdir) and evaluate; eval: evaluate '
                          'the latest checkpoint in --workdir with the suite config.eval.suite '
                          'into WORKDIR/eval_<suite>.json; robustness: the final evaluation '
                          '(clean, FGSM, PGD) of checkpoint config.eval.epoch (0: the latest) into '
                          'WORKDIR/robustness_epoch<E>.json; analyze: feature-activation '
                          'differences (V_act, T_act, channel masking; config.analysis) into '
                          'WORKDIR/analysis.json and WORKDIR/tact.npz; noise_eval: inference '
                          'noise config.eval.input_noise attacked non-adaptively and with EOT '
                          'into WORKDIR/eval_noise.json; examples: the report\'s adversarial '
                          'examples into WORKDIR/examples.npz; print_config: print the config\'s '
                          'fields (the recipe with its --config.<field> overrides) and exit, '
                          'without --workdir.')
_TRACEBACK = flags.DEFINE_bool('traceback', False, 'On an error, show the full traceback '
                               'instead of one line.')
flags.DEFINE_alias('verbose', 'traceback')
flags.mark_flag_as_required('config')
flags.register_multi_flags_validator(
    ['mode', 'workdir'], lambda f: f['mode'] == 'print_config' or f['workdir'] is not None,
    '--workdir is required (all modes but --mode=print_config)')


TRACEBACK_HINT = '(--traceback shows the full traceback)'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value == 'print_config':
    print_page('\n'.join(config_fields(_CONFIG.value)))
    return
  tracebacks = None if _TRACEBACK.value else TracebackLog(_WORKDIR.value)
  if tracebacks is not None:
    tracebacks.capture()
  try:
    run_mode(_CONFIG.value)
  except Exception as e:  # pylint: disable=broad-except  # the command line's one line
    if tracebacks is None:
      raise
    if tracebacks.path or storage_error(e) is not None:
      tracebacks.write_exception(e)
    where = f' (tracebacks: {tracebacks.path})' if tracebacks.path else ''
    print(f'fat_jax: {one_line(e)}{where}\n{TRACEBACK_HINT}', file=sys.stderr)
    sys.exit(1)
  if tracebacks is not None and tracebacks.path:
    logging.getLogger('fat_jax').warning('The libraries logged errors: see %s.', tracebacks.path)


def run_mode(config):
  """Runs --mode on `config` and --workdir."""
  evaluator = EVALUATORS.get(_MODE.value)
  split_cpu_cores(cpu_device_count(config.cpu_devices, evaluator is not None and
                                   evaluator.data_parallel, config.eval.batch_size))
  initialize_distributed(config.distributed)
  absl_logging.set_verbosity(absl_logging.WARNING)  # quiet the libraries (orbax, jax, ...)
  use_compilation_cache(config.compilation_cache, jax.default_backend())
  # Process 0 reports; the others only warn.
  logging.getLogger('fat_jax').setLevel(logging.INFO if is_writer() else logging.WARNING)
  config.progress = config.progress and is_writer()
  if _MODE.value != 'train':  # training validates and checks its workdir itself
    validate_config(config, suites=SUITES)
    check_against_run(config, _WORKDIR.value)
  if evaluator is not None:
    run = Run.open(os.path.abspath(_WORKDIR.value), config)
    logging.getLogger('fat_jax').info('%s', evaluator.done(run, evaluator.run(run)))
    return
  train_and_evaluate(config, _WORKDIR.value)
  write_end_of_run_report(config, _WORKDIR.value)  # config.report: WORKDIR/report
  if is_writer():
    print(run_summary(_WORKDIR.value))


def print_page(text: str) -> None:
  """Prints `text`; a reader that stops early (``| head``) is no error."""
  try:
    print(text, flush=True)
  except BrokenPipeError:  # and none at exit, when Python flushes stdout again
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def config_fields(config) -> list[str]:
  """``FIELD = VALUE`` for each field of `config` (a nested field dotted, as --config.FIELD names
  it), in the config's order: what --mode=print_config prints."""
  def walk(fields: dict, prefix: str):
    for key, value in fields.items():
      if isinstance(value, dict) and value:
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key} = {value!r}'
  return list(walk(config.to_dict(), ''))


def compilation_cache_dir(setting: str, platform: str, cpu_loads: bool | None = None) -> str:
  """The folder of JAX's persistent compilation cache for ``config.compilation_cache`` on
  `platform` ('' = none). 'auto': ``$JAX_COMPILATION_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/fat_jax/xla`` (``~/.cache/fat_jax/xla``), on CPU only where XLA's loader
  reads back the programs it wrote (`cpu_loads`; None: `cpu_loads_programs()`): on some x86
  CPUs it rejects every one (openxla/xla#44565) and the cache would only cost writes;
  anything else: that folder."""
  if setting != 'auto':
    return os.path.expanduser(setting)
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  if platform == 'cpu' and not (cpu_loads_programs() if cpu_loads is None else cpu_loads):
    return ''
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(cache_home, 'fat_jax', 'xla')


def cpu_loads_programs() -> bool:
  """Whether XLA's CPU backend loads back a program it serialised (what JAX's persistent cache
  does across processes): a tiny program compiled, serialised and loaded in this process."""
  from jax.experimental import serialize_executable  # pylint: disable=import-outside-toplevel
  try:
    compiled = jax.jit(lambda a: a + 1).lower(jax.ShapeDtypeStruct((2,), 'float32')).compile()
    serialize_executable.deserialize_and_load(*serialize_executable.serialize(compiled))
  except Exception:  # pylint: disable=broad-except  # any refusal: the cache stays off
    return False
  return True


# Programs kept: those that took this long to compile (JAX's default, 1 s, leaves out most of
# an evaluation's attack programs on CPU, docs/throughput.md).
CACHE_MIN_COMPILE_S = 0.2


def use_compilation_cache(setting: str, platform: str) -> None:
  """Keeps compiled programs in `compilation_cache_dir`, or switches JAX's cache off where
  that is ''. Programs that took ≥ `CACHE_MIN_COMPILE_S` to compile are kept unless
  ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise."""
  folder = compilation_cache_dir(setting, platform)
  if not folder:
    jax.config.update('jax_enable_compilation_cache', False)
    return
  jax.config.update('jax_compilation_cache_dir', folder)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_S)


PACKAGED_CONFIGS = 'configs'


def resolve_config_path(value: str) -> str:
  """`value` of --config (``PATH[:ARG]``) with a missing ``configs/NAME.py`` replaced by the
  recipe shipped in the package; any other value unchanged."""
  path, sep, arg = value.partition(':')
  folder, name = os.path.split(os.path.normpath(path))
  if os.path.exists(path) or folder != PACKAGED_CONFIGS:
    return value
  try:
    from fat_jax import configs  # pylint: disable=import-outside-toplevel
  except ModuleNotFoundError:  # a checkout on PYTHONPATH: configs/ is only at the top
    return value
  packaged = os.path.join(os.path.dirname(configs.__file__), name)
  return packaged + sep + arg if os.path.exists(packaged) else value


def recipes_folder() -> str:
  """The folder of the recipes shipped: the package's `fat_jax.configs`, else (a checkout on
  PYTHONPATH) the checkout's configs/."""
  try:
    from fat_jax import configs  # pylint: disable=import-outside-toplevel
    return os.path.dirname(configs.__file__)
  except ModuleNotFoundError:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        PACKAGED_CONFIGS)


def recipes(folder: str) -> list[tuple[str, str, str]]:
  """(file name, how --config takes it, the first paragraph of its docstring on one line) of
  each recipe in `folder`, read with `ast` (nothing is run): ``NAME.py[:ARG]`` where
  ``get_config``'s argument has a default, ``NAME.py:ARG`` where it has none."""
  out = []
  for name in sorted(os.listdir(folder)):
    if not name.endswith('.py') or name.startswith('_'):
      continue
    with open(os.path.join(folder, name)) as f:
      tree = ast.parse(f.read(), name)
    usage = name
    for node in tree.body:
      if isinstance(node, ast.FunctionDef) and node.name == 'get_config' and node.args.args:
        arg = node.args.args[0].arg
        if node.args.defaults:
          usage += f'[:{arg}]  ({arg} default: {ast.literal_eval(node.args.defaults[0])})'
        else:
          usage += f':{arg}'
    doc = (ast.get_docstring(tree) or '').split('\n\n')[0]
    out.append((name, usage, ' '.join(doc.split())))
  return out


HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '-helpshort')


def asks_help(argv: list[str]) -> bool:
  """Whether `argv` asks for the short help (--help, -h, --helpshort; not --helpfull)."""
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  return any(a in HELP_FLAGS for a in args)


def help_text(command: str, folder: str, width: int = 100) -> str:
  """--help: this module's docstring with its examples run as `command`, fat_jax's flags, the
  recipes in `folder` (`recipes`, their descriptions wrapped at `width` columns) and how to
  print a recipe's fields."""
  usage = re.sub(rf'^  {LAUNCHER}', '  ' + command, __doc__.strip(), flags=re.M)
  module = flags.FLAGS.find_module_defining_flag('mode')
  lines = [usage, '', f'fat_jax\'s flags (--helpfull: every flag, JAX\'s and the libraries\' '
           'too):', flags.FLAGS.module_help(module), '',
           f'Recipes (--config=configs/NAME.py[:ARG], shipped in {folder}):']
  for _, usage_line, doc in recipes(folder):
    lines += ['  ' + usage_line, textwrap.fill(doc, width, initial_indent=' ' * 6,
                                               subsequent_indent=' ' * 6)]
  lines += ['', "A recipe's fields and values, with any --config.FIELD=VALUE overrides applied:",
            f'  {command} --config=configs/NAME.py[:ARG] --mode=print_config']
  return '\n'.join(lines)


def resolve_config_args(argv: list[str]) -> list[str]:
  """`argv` with the value of ``--config=V`` / ``--config V`` passed through
  `resolve_config_path`."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      out[i] = '--config=' + resolve_config_path(a[len('--config='):])
    elif a == '--config' and i + 1 < len(out):
      out[i + 1] = resolve_config_path(out[i + 1])
  return out


def config_file(argv: list[str]) -> str | None:
  """The file of the last ``--config=PATH[:ARG]`` / ``--config PATH[:ARG]`` of `argv`."""
  value = None
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      value = a[len('--config='):]
    elif a == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
  return None if value is None else value.partition(':')[0]


def check_config_file(path: str | None) -> None:
  """`ConfigError` when `path` (of --config) is no file, naming the closest recipes (those
  shipped for a missing configs/ folder), else for configs/NAME.py the list (--help)."""
  if path is None or os.path.isfile(path):
    return
  folder, name = os.path.split(path)
  shipped = os.path.normpath(folder) == PACKAGED_CONFIGS
  listed = folder or '.'
  if shipped and not os.path.isdir(listed):  # an installed fat_jax: the recipes it ships
    listed = recipes_folder()
  names = os.listdir(listed) if os.path.isdir(listed) else []
  close = [os.path.join(folder, n) for n in difflib.get_close_matches(
      name, sorted(n for n in names if n.endswith('.py')))]
  if close:
    hint = f'. Did you mean {" or ".join(close)}?'
  else:
    hint = f' ({command_name()} --help lists the recipes)' if shipped else ''
  raise ConfigError(f'--config={path}: no such file{hint}')


def asks_traceback(argv: list[str]) -> bool:
  """Whether `argv` sets --traceback (or --verbose), read before absl parses it."""
  wanted = False
  for a in argv[1:]:
    if a == '--':
      break
    name, _, value = a.lstrip('-').partition('=')
    if name in ('traceback', 'verbose'):
      wanted = value.lower() not in ('false', 'f', '0')
    elif name in ('notraceback', 'noverbose'):
      wanted = False
  return wanted


def flag_error(error: Exception, argv: list[str]) -> str:
  """The one line for `error`, raised while the flags of `argv` were parsed: an error in the
  config file with its line, a field the config lacks with the flag that names it (and
  ml_collections' "Did you mean"), else `one_line`."""
  path = config_file(argv)
  lines = lambda e: message(e).splitlines() or ['']
  for e in chain(error):
    if isinstance(e, SyntaxError) and path and e.filename == path:
      return f'error: the config file {path}, line {e.lineno}: {e.msg}'
    frames = [f for f in traceback.extract_tb(e.__traceback__) if path and f.filename == path]
    if frames:
      return (f'error: the config file {path}, line {frames[-1].lineno}: '
              f'{type(e).__name__}: {lines(e)[0]}')
  if isinstance(error, flags.Error):
    return f'error: {lines(error)[0]}'
  if isinstance(error, (AttributeError, KeyError)):
    field, *hint = lines(error)
    field = field.strip('\'"')
    flag = next((a.partition('=')[0] for a in argv if a.startswith('--config.') and
                 field in a.partition('=')[0].split('.')), '--config')
    if flag == f'--config.method.{field}' and field in RENAMED:
      hint = [f"The method's components have sections: use "
              f"{' and '.join(f'--config.method.{place}' for place in RENAMED[field])}"]
    return f'error: {flag}: the config has no field {field!r}' + ''.join(f'. {h}' for h in hint)
  return one_line(error).splitlines()[0]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run``'s ``flags_parser``), with an error in a flag or in the
  config file it loads as one line (the full traceback with --traceback); --help is
  `help_text`."""
  if asks_help(argv):
    print_page(help_text(command_name(), recipes_folder()))
    sys.exit(0)
  try:
    check_config_file(config_file(argv))
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # the config file may raise anything
    if asks_traceback(argv):
      raise
    print(f'fat_jax: {flag_error(e, argv)}\n{TRACEBACK_HINT}', file=sys.stderr)
    sys.exit(1)


def run():
  """The ``fat-jax-train`` console command."""
  app.run(main, argv=resolve_config_args(sys.argv), flags_parser=parse_flags)


if __name__ == '__main__':
  run()
