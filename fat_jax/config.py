"""The default configuration every recipe in ``configs/`` starts from.

All sizes are global (over all devices); `eps` and step sizes are in pixel
units of [0, 1]; `method.alpha` and `eval.pgd_step_size` are multiples of ε as
in the seed papers' ``--alpha`` flags. `eval_eps` reads a config's evaluation ε.
The settings of a method's components and of the CO guard take their defaults from
the role values that use them (`default_of`): each default is written once.
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from fat_jax.methods.guard import Adaptive, Detector, Guard, Rollback
from fat_jax.methods.objectives import MART, TRADES, MEPObjective
from fat_jax.methods.regularizers import AAER, ELLE, GradAlign, LCo, LStable
from fat_jax.methods.signals import FGSMPGDGap, VAct
from fat_jax.methods.training_attacks import (AdaptiveAttack, DynamicAttack, FGSMAttack,
                                              PriorAttack, ZeroGrad)
from fat_jax.methods.weight_perturbations import AWP, LAP


def default_of(role, field: str):
  """The default of `field` of the role value class `role` (a frozen dataclass)."""
  default = next(f.default for f in dataclasses.fields(role) if f.name == field)
  if default is dataclasses.MISSING:
    raise ValueError(f'{role.__name__}.{field} has no default.')
  return default


_TYPES = {'float': float, 'int': int, 'bool': bool, 'str': str}


def section(role, *fields: str, **values) -> ml_collections.ConfigDict:
  """The config section of the role value class `role`: each of `fields` at the role's
  default (a field without one: unset, a placeholder of its type), then `values` (a field the
  config holds otherwise: a switch unset by default, a step in units of ε)."""
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(role):
    if f.name in fields:
      out[f.name] = (config_dict.placeholder(_TYPES[f.type]) if f.default is dataclasses.MISSING
                     else f.default)
  unknown = set(fields) - set(out)
  if unknown:
    raise ValueError(f'{role.__name__} has no fields {sorted(unknown)}.')
  out.update(values)
  return out


# The method fields of configs written before the component sections (config.json of earlier
# runs), each with its place now; `upgrade` reads them.
RENAMED = {
    'lap_beta': ('lap.beta',), 'lap_gamma': ('lap.gamma',), 'lap_ascent': ('lap.ascent',),
    **{f'aaer_lambda{i}': (f'aaer.lambda{i}',) for i in (1, 2, 3)},
    'aaer_differentiable_loss_variation': ('aaer.differentiable_loss_variation',),
    'gradalign_lambda': ('gradalign.lam',),
    'elle_lambda': ('elle.lam',), 'elle_adaptive': ('elle.adaptive',),
    'elle_decay': ('elle.decay',), 'elle_sensitivity': ('elle.sensitivity',),
    'elle_clean_forward': ('elle.clean_forward',),
    'mep_label_smoothing': ('mep.label_smoothing',), 'mep_lambda': ('mep.lam',),
    'mep_decay': ('mep.decay',), 'mep_reset_every': ('mep.reset_every',),
    'trades_beta': ('trades.beta',), 'mart_beta': ('mart.beta',),
    'awp_gamma': ('awp.gamma',), 'awp_warmup_epochs': ('awp.warmup_epochs',),
    'zerograd_q': ('zerograd.q',),
    'dart_c_max': ('dart.c_max',), 'dart_control_epochs': ('dart.control_epochs',),
    'dart_weighting': ('dart.weighting',),
    **{f'atas_{k}': (f'atas.{k}',) for k in ('c', 'beta', 'step_scale', 'min_step', 'max_step',
                                             'warmup_epochs', 'reset_every')},
    'feature_node': ('stable.node', 'co.node'), 'stable_alpha3': ('stable.alpha3',),
    **{f'co_{k}': (f'co.{k}',) for k in ('tact_file', 'percent', 'alpha3', 'saturation')},
}


def upgrade(stored: dict) -> dict:
  """A stored config (config.json) with the method fields of earlier releases (`RENAMED`) in
  their sections; a current one unchanged."""
  method = stored.get('method')
  if not isinstance(method, dict) or not RENAMED.keys() & method.keys():
    return stored
  method = dict(method)
  for old, places in RENAMED.items():
    if old in method:
      value = method.pop(old)
      for place in places:
        part, field = place.split('.')
        method[part] = {**method.get(part, {}), field: value}
  return {**stored, 'method': method}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.eps = 8 / 255
  c.batch_size = 128
  c.num_epochs = 30
  # Weight EMA of any method (fat_jax.optim.WeightAverage); the monitor, the final evaluation
  # and --mode=eval use it. τ in [0, 1), 0 = off (Gowal et al. 2020: 0.995).
  c.ema_decay = 0.0
  c.ema_warmup = 0.025            # EMA warm-up W as a fraction of all training steps

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cifar10'
  # 'auto' | 'dir' | 'tfds'; 'tfds' with a name of no other source: that prepared TFDS image
  # set, streamed, from its data_dir data.dir ('' = TFDS's default).
  c.data.source = 'auto'
  c.data.dir = ''                 # folder with the original files (cifar-10-batches-py, IDX .gz, ...)
  c.data.n_train = 0              # 0 = all
  c.data.n_test = 0
  # Input path (fat_jax.data.loader): 'auto' streams the folder data sets (tiny_imagenet,
  # imagenet100, image_folder) and holds the others in memory; 'memory' | 'stream' force one.
  c.data.pipeline = 'auto'
  c.data.workers = 0              # stream: grain worker processes decoding images (0 = none)
  c.data.image_size = 0           # imagenet100, image_folder, TFDS-streamed: crop size (0 = 224)
  c.data.max_image_pixels = 50_000_000  # stream: larger images are refused before decoding
  c.data.augment = 'auto'         # on-device augmentation: 'auto' (the data set's) | 'crop_flip'
                                  # | 'crop' | 'none'

  c.model = ml_collections.ConfigDict()
  c.model.name = 'preact_resnet18'
  c.model.width = 64
  c.model.depth = 4               # 'cnn': conv layers; WideResNets: 6n + 4 (set it: 34, 28)
  c.model.widen_factor = 10       # wide_resnet, dm_wide_resnet: k of WRN-d-k
  c.model.activation = 'relu'     # wide_resnet, dm_wide_resnet: 'relu' | 'swish'
  c.model.padding = 0             # dm_wide_resnet: zero pixels added on each side of the input
  c.model.batchnorm = False       # 'cnn' only
  c.model.dtype = 'float32'       # compute dtype: 'bfloat16' = mixed precision (fp32 weights)
  c.model.normalize = True        # (x − μ)/σ as the first op; False: raw [0, 1] pixels
  c.model.init = 'torch'          # preact_resnet18: 'torch' | 'he_normal' (GradAlign's models.py)
  c.model.head_bn_relu = True     # preact_resnet18: BN-ReLU before pooling (GradAlign's: none)
  c.model.conv = 'xla'            # 'im2col_grad': weight gradient as im2col matmul on CPU (same values)
                                  # | 'patch_input_grad' (fat_jax.models.conv)
  # 'vit_small' (LAP's vit.py): its sizes; smaller values give a tiny ViT.
  c.model.vit = ml_collections.ConfigDict(dict(patch_size=4, embed_dim=384, depth=12,
                                               num_heads=6, mlp_ratio=4.0))
  # With normalize: the statistics (x − mean)/std; None = the data set's, () = none (models
  # converted from code that feeds raw [0, 1] pixels, docs/convert.md).
  c.model.mean = config_dict.placeholder(tuple)
  c.model.std = config_dict.placeholder(tuple)

  c.method = ml_collections.ConfigDict()
  c.method.name = 'fgsm_rs'
  c.method.alpha = config_dict.placeholder(float)       # × ε; None = the method's default
  c.method.init = config_dict.placeholder(str)          # 'zero' | 'uniform'
  c.method.init_scale = config_dict.placeholder(float)  # uniform init U(−kε, kε)
  c.method.project = config_dict.placeholder(bool)      # Π_ε after the step
  c.method.steps = config_dict.placeholder(int)         # attack steps (PGD-AT)
  c.method.attack_bn = config_dict.placeholder(str)     # 'train' | 'eval': BN mode of the attack
  c.method.attack_loss = config_dict.placeholder(str)   # 'ce' | 'kl' (TRADES' attack)
  # Single-step attacks: α (and Π_ε's radius) × min((epoch + i/steps)/W, 1) for W epochs;
  # 0 = off (AAER's SVHN/AAER.py: W = 5).
  c.method.alpha_warmup_epochs = default_of(FGSMAttack, 'warmup_epochs')
  c.method.robust_overfitting_forwards = False          # Rice et al.'s extra BN forwards
  # The components, one section per role value (`section`): a component is on when its switch
  # (the first field named below) is set, for any method that can take it, or by the method's
  # name (docs/methods.md); its other fields are then read, and refused while it is off.
  c.method.lap = section(LAP, 'beta', 'gamma', 'ascent')  # LAP (ICML 2024): β, λ_l's γ
  c.method.aaer = section(AAER, 'lambda1', 'lambda2', 'lambda3',  # AAER (NeurIPS 2023)
                          'differentiable_loss_variation')  # the paper's reading of C_A
  c.method.gradalign = section(GradAlign, 'lam')  # None: 0.02·10^(ε·255/8) for 'gradalign'
  # ELLE (ICLR 2024): λ·local-linearity error (None: losses.elle's, λ_max for ELLE-A);
  # ELLE-A (adaptive, None: on for 'elle_a'): λ 0 → λ_max when the error > μ + k·σ, else
  # λ ← decay·λ; clean_forward: the official train-mode forward at x.
  c.method.elle = section(ELLE, 'lam', 'adaptive', 'decay', 'sensitivity', 'clean_forward',
                          adaptive=config_dict.placeholder(bool))
  # FGSM-MEP (init 'prior'): the smoothed labels' true-class probability, the weight of
  # MSE(f(x + δ), f(x + P)), the prior's momentum decay, epochs between prior resets.
  c.method.mep = section(PriorAttack, 'label_smoothing', 'decay', 'reset_every',
                         lam=default_of(MEPObjective, 'lam'))
  # Multi-step and other baselines (docs/protocol.md §2.5).
  c.method.trades = section(TRADES, beta=config_dict.placeholder(float))  # 6 for 'trades'
  c.method.mart = section(MART, beta=config_dict.placeholder(float))      # 5 for 'mart'
  # AWP on any method (AT 0.01, TRADES 0.005), from epoch `warmup_epochs` (0-based)
  c.method.awp = section(AWP, 'gamma', 'warmup_epochs')
  c.method.zerograd = section(ZeroGrad, q=config_dict.placeholder(float))  # 0.35 for 'zerograd'
  # DART (Wang et al., ICML 2019): FOSC threshold c_t = max(c_max·(1 − t/T'), 0), T' =
  # control_epochs (official 0.5 and 100); 'ce': each example's CE × its own CE (epoch ≥ 1).
  c.method.dart = section(DynamicAttack, 'c_max', 'control_epochs', 'weighting')
  # ATAS (init 'previous'): step clip(step_scale/(1 + √v/c), min_step, max_step), all three ×
  # ε (official at ε = 8/255: 16, 4, 14 /255); β: momentum of the squared gradient norm;
  # warm-up epochs of the constant step α; epochs between re-draws of the state.
  c.method.atas = section(AdaptiveAttack, 'c', 'beta', 'warmup_epochs', 'reset_every',
                          step_scale=2.0, min_step=0.5, max_step=1.75)
  # Feature-activation differences (Zhao et al., ECCV 2024) at one feature node: L_stable
  # (weight α3, None: 200 for 'fd') and L_co (the T_act file of --mode=analyze; the top
  # `percent`% channels; weight α3 of −L_stable(C_p); saturation 0 = Eq. 9, a > 0: tanh(a·D)/a).
  c.method.stable = section(LStable, 'node', alpha3=config_dict.placeholder(float))
  c.method.co = section(LCo, 'tact_file', 'percent', 'alpha3', 'saturation', 'node')

  c.optim = ml_collections.ConfigDict()
  c.optim.schedule = 'cyclic'     # 'cyclic' | 'piecewise' | 'piecewise_linear' | 'multistep'
                                  # | 'constant' (fat_jax.optim.Schedule)
  c.optim.lr_max = 0.2
  c.optim.momentum = 0.9
  c.optim.base_momentum = 0.8     # cyclic schedule: momentum at the lr peak
  c.optim.cycle_up = 0.5          # cyclic schedule: fraction of the iterations with lr rising
  c.optim.weight_decay = 5e-4
  c.optim.milestones = (100, 150)  # multistep, in epochs
  c.optim.gamma = 0.1

  c.eval = ml_collections.ConfigDict()
  c.eval.eps = config_dict.placeholder(float)  # None = training eps
  c.eval.n = 1000                 # final evaluation: first n test points (0 = all)
  c.eval.batch_size = 256
  c.eval.pgd_steps = 50
  c.eval.pgd_restarts = 10
  c.eval.pgd_step_size = 0.25     # × ε
  c.eval.monitor_n = 1000         # per-epoch monitor: first n test points
  c.eval.monitor_pgd_steps = 10
  c.eval.monitor_pgd_restarts = 1
  c.eval.monitor_every_steps = 0  # > 0: also monitor every k steps into monitor.jsonl
  # `launch.py --mode=eval`: an attack suite on a checkpoint (fat_jax.evaluate.evaluate).
  c.eval.suite = 'pgd'            # 'aa_standard' | 'aa_plus' | 'aa_rand' | 'pgd' | 'transfer'
                                  # | 'custom' (docs/evaluation.md)
  c.eval.norm = 'Linf'            # threat model of --mode=eval: 'Linf' | 'L2' (training: Linf)
  # --mode=eval's model.conv: 'patch_input_grad' runs the attacks' strided input gradients as
  # the transpose of an im2col matmul on CPU (faster; same forward values, gradients to ~1e-6);
  # 'xla' as the run was trained.
  c.eval.conv = 'patch_input_grad'
  c.eval.individual = False       # every attack from the clean points, each on all of them
  c.eval.attacks = ()             # 'custom' (and 'transfer'): names in fat_jax.evaluate.ATTACKS
  c.eval.epoch = 0                # checkpoint to evaluate; 0 = the latest
  c.eval.apgd_steps = 100
  c.eval.apgd_restarts = config_dict.placeholder(int)  # None = the suite's (aa_plus 5, else 1)
  c.eval.apgd_t_restarts = config_dict.placeholder(int)  # None = the suite's (aa_plus 1)
  c.eval.n_target_classes = 9
  c.eval.fab_steps = 100
  c.eval.fab_restarts = config_dict.placeholder(int)   # None = the suite's (aa_plus 5, else 1)
  c.eval.fab_t_restarts = config_dict.placeholder(int)  # None = the suite's (aa_plus 1)
  c.eval.square_queries = 5000
  c.eval.square_p_init = 0.8
  c.eval.eot_samples = config_dict.placeholder(int)  # K; None = 20 for 'aa_rand'
  c.eval.n_draws = 100            # M fresh draws score each point of a randomised model
  c.eval.input_noise = 0.0        # > 0: evaluate f(x + r), r ~ U(±a) or N(0, a²)
  c.eval.noise_kind = 'uniform'   # 'uniform' | 'gaussian'
  c.eval.noise_clip = False       # clip x + r to [0, 1]
  c.eval.surrogate_workdir = ''   # 'transfer': the run whose latest checkpoint attacks
  c.eval.checks = True            # sanity checks (fat_jax.evaluate.sanity)
  c.eval.binarization = False     # with the checks: the binarization test (Zimmermann et al.)
  c.eval.binarization_n = config_dict.placeholder(int)  # its points (None: evaluate's, 20)
  c.eval.check_pgd_steps = 20
  c.eval.square_check = True      # a short Square after a suite without it (black-box check)
  c.eval.eps_sweep = False        # APGD-CE over ε ∈ {0, ε/2, ε, 2ε, 1}
  c.eval.eot_check_n = 0          # randomised models: rerun the suite with K = 100 on n points
  # RobustBench model-info fields of WORKDIR/robustbench_<suite>_<norm>.json (--mode=eval).
  c.eval.robustbench = ml_collections.ConfigDict()
  c.eval.robustbench.name = ''    # the paper's title
  c.eval.robustbench.link = ''    # the paper's URL
  c.eval.robustbench.authors = ''
  c.eval.robustbench.venue = ''   # e.g. 'ICLR 2020'; '' shows as 'Unpublished'
  c.eval.robustbench.reported = config_dict.placeholder(float)  # the paper's robust accuracy, %
  c.eval.robustbench.additional_data = False
  c.eval.robustbench.architecture = ''  # '' = from model.name (e.g. PreActResNet-18)
  c.eval.robustbench.footnote = ''

  # `launch.py --mode=analyze`: feature-activation differences of a checkpoint
  # (docs/protocol.md §2.4).
  c.analysis = ml_collections.ConfigDict()
  c.analysis.n_train = 5000       # training points for V_act and T_act (first n; 0 = all)
  c.analysis.n = 1000             # test points for the masked accuracies (first n; 0 = all)
  c.analysis.attack = 'fgsm'      # δ of V_act and T_act: 'fgsm' (zero init, α = ε) | 'pgd'
  c.analysis.tact_scale = 100.0   # a in T_act = tanh(a · Σ‖M_k(x) − M_k(x + δ)‖² / count)
  c.analysis.tact_reduction = 'example_mean'  # count |D|·H·W; 'eq6': C·H·W (Eq. 6 as written)
  c.analysis.alpha2 = (1.0, 0.99, 0.5, 0.1)  # mask channels with T_act > α2
  c.analysis.pgd_steps = 10       # PGD (step ε/4, 1 restart) of the analysis
  c.analysis.batch_size = 256

  # `launch.py --mode=shortcuts`: LAP's shortcut removal on a checkpoint
  # (fat_jax.analysis.shortcut_removal, docs/cifar_study.md).
  c.shortcuts = ml_collections.ConfigDict()
  c.shortcuts.former = (1, 2, 3, 4, 5)     # kernels, 1-based in the LAP layer order
  c.shortcuts.latter = (-6, -5, -4, -3, -2)  # negative from the end: −1 is the classifier
  c.shortcuts.fractions = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)  # of the weights removed
  c.shortcuts.criteria = ('largest', 'random')  # which go: 'largest' |w|, 'random', 'smallest'
  c.shortcuts.scope = 'layer'     # the fraction of each kernel; 'group': of the group pooled
  c.shortcuts.n = 1000            # first n test points (0 = all)
  c.shortcuts.pgd_steps = 10      # PGD-k, step ε/4
  c.shortcuts.pgd_restarts = 1

  c.co_monitor = ml_collections.ConfigDict()
  c.co_monitor.drop = 0.2         # PGD accuracy below its best by more than this ...
  c.co_monitor.gap = 0.2          # ... while FGSM accuracy exceeds it by more than this
  c.co_monitor.early_stop = False  # stop at onset; evaluate the last good epoch

  # CO guard (fat_jax.methods.guard, docs/co_guard.md): CO signals every `every` steps on a
  # fixed training batch into signals.jsonl, a detector per signal and a policy. every = 0: off.
  c.guard = ml_collections.ConfigDict()
  c.guard.every = 0               # steps between two checks; 0 = no guard
  c.guard.signals = ('elle_error', 'aae_fraction', 'vact', 'gradalign_cos', 'fgsm_pgd_gap',
                     'fosc')      # measured and logged (fat_jax.methods.signals)
  c.guard.act_on = ('elle_error',)  # the signals whose trigger starts the policy
  c.guard.policy = 'off'          # 'off' (log only) | 'adaptive' | 'rollback'
  # detector: trigger when the value leaves mean ± k·std ...
  c.guard.sensitivity = default_of(Detector, 'sensitivity')
  # ... of the last `window` earlier values (0 = all)
  c.guard.window = default_of(Detector, 'window')
  # the fixed batch: the last n training examples (streamed: spread)
  c.guard.batch_size = default_of(Guard, 'batch_size')
  c.guard.hold_out = default_of(Guard, 'hold_out')  # leave that batch out of training
  c.guard.train_bn = True         # signals' forwards in BatchNorm train mode (stats discarded)
  c.guard.node = default_of(VAct, 'node')  # feature node of V_act
  # PGD of the FGSM−PGD gap (step ε/4, 1 restart)
  c.guard.pgd_steps = default_of(FGSMPGDGap, 'steps')
  # 'adaptive': weight scale × decay per step without a trigger
  c.guard.decay = default_of(Adaptive, 'decay')
  # 'rollback': 'n_fgsm' | 'fgsm_rs' | 'none' (same method)
  c.guard.switch = default_of(Rollback, 'switch')
  # 'rollback': restore the state of this many checks before
  c.guard.rollback_checks = default_of(Rollback, 'checks_back')
  # 'rollback': states kept in memory (≥ rollback_checks)
  c.guard.snapshots = default_of(Rollback, 'snapshots')

  # Multi-host runs (fat_jax.parallel.initialize_distributed); all sizes above stay global.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''  # 'host:port' of process 0; '' = single process
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = False      # jax.distributed.initialize()'s cluster detection (SLURM, TPU)

  c.checkpoint_keep = 2
  c.progress = True
  # Every number of metrics.jsonl and monitor.jsonl also as TensorBoard scalars at the global
  # step, in WORKDIR/tensorboard (fat_jax.run.tensorboard_log; `tensorboard --logdir runs/`).
  c.tensorboard = True
  # JAX's persistent compilation cache (launch.py): compiled programs kept across runs, so a
  # relaunch, a resumption or a checkpoint evaluation skips most compilation. 'auto' =
  # $JAX_COMPILATION_CACHE_DIR, else ~/.cache/fat_jax/xla ($XDG_CACHE_HOME), on CPU only where
  # XLA's loader reads its programs back (launch.cpu_loads_programs); a folder; '' = off.
  c.compilation_cache = 'auto'
  # XLA CPU devices made of the cores (launch.py, fat_jax.parallel.split_cpu_cores; no effect on
  # a GPU or TPU). 'auto': in the modes that split their batches over the devices (eval,
  # robustness, shortcuts) one device per core, each running its kernels on one thread, which
  # evaluates faster than one device on all cores (docs/throughput.md); in training XLA's
  # default, one device, so that a run's sequence is that of one device. 'N': N devices in
  # every mode (training splits its batches too; batch sizes must be multiples of N).
  c.cpu_devices = 'auto'
  c.report = True                 # launch.py writes WORKDIR/report (fat_jax.reports.report)
  return c


def eval_eps(config) -> float:
  """The evaluation ε of a run: `eval.eps`, or the training `eps` when it is None (or absent,
  in a config.json written before the field existed)."""
  return float(config.eval.eps if config.eval.get('eps') is not None else config.eps)
