"""Collects the parts of `benchmarks/gpu.sh` into OUT/results.json and OUT/table.md.

  python benchmarks/gpu_table.py OUT_DIR [--smoke]

Reads OUT/parts.tsv (part, exit status, seconds, timeout; timeout 0: skipped) and each part's
JSON (`step_<dtype>_b<batch>[_<network>].json` from step_time.py, `eval.json` from
eval_throughput.py, `input.json` from input_throughput.py). A part that failed or timed out is
listed as such, with the tail of its log in the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

SMOKE_NOTE = ('**Smoke run (`--smoke`): tiny sizes to check the script end to end. These '
              'numbers are not a benchmark.**')
TIMEOUT_STATUSES = (124, 137)
MIB = 2 ** 20


def read_parts(out: str) -> list[dict]:
  parts = []
  with open(os.path.join(out, 'parts.tsv'), encoding='utf-8') as f:
    for line in f:
      name, rc, seconds, limit = line.rstrip('\n').split('\t')
      part = {'name': name, 'exit_status': int(rc), 'seconds': int(seconds),
              'timeout_s': int(limit)}
      path = os.path.join(out, f'{name}.json')
      if part['exit_status'] == 0 and os.path.exists(path):
        with open(path, encoding='utf-8') as j:
          part['result'] = json.load(j)
      else:
        part['status'] = failure(part)
        log = os.path.join(out, f'{name}.log')
        if os.path.exists(log):
          with open(log, encoding='utf-8', errors='replace') as g:
            part['log_tail'] = g.read()[-2000:]
      parts.append(part)
  return parts


def failure(part: dict) -> str:
  if part['timeout_s'] == 0:
    return 'skipped: GPU_BENCH_TOTAL_TIMEOUT spent'
  if part['exit_status'] in TIMEOUT_STATUSES:
    return f"failed: timed out after {part['timeout_s']} s"
  if part['exit_status'] == 0:
    return 'failed: no JSON written'
  return f"failed: exit status {part['exit_status']}"


def mib(v) -> str:
  return '–' if v is None else f'{v / MIB:.0f}'


def network(result: dict) -> str:
  """The network of a step_time.py result ('PreActResNet-18 width 64', 'WideResNet-34-10')."""
  return result.get('network') or f"{result['model']} width {result['width']}"


def step_table(parts: list[dict]) -> list[str]:
  lines = ['| network | method | batch | dtype | images/s | time × FGSM-RS | XLA plan (MiB) | '
           'process peak (MiB) |', '|---|---|---:|---|---:|---:|---:|---:|']
  torch_rows = []
  for part in parts:
    if not part['name'].startswith('step_'):
      continue
    # step_<dtype>_b<batch>, PreActResNet-18; step_<dtype>_b<batch>_<network label>
    _, dtype, batch, *net = part['name'].split('_', 3)
    batch = batch[1:]
    if 'result' not in part:
      lines.append(f"| {net[0] if net else 'preact_resnet18'} | all | {batch} | {dtype} | "
                   f"{part['status']} | | | |")
      continue
    r = part['result']
    for name, row in r['methods'].items():
      ratio = next(v for k, v in row.items() if k.startswith('x_'))
      lines.append(f"| {network(r)} | {name.split('/')[0]} | {r['batch']} | {dtype} | "
                   f"{row['images_per_s']:.1f} | {ratio:.3f} | {mib(row['compiled_bytes'])} | "
                   f"{mib(row['process_peak_bytes'])} |")
    if 'pytorch_fgsm_rs' in r:
      torch_rows.append(f"| {r['batch_per_device']} | {r['pytorch_fgsm_rs']['images_per_s']:.1f} "
                        f"| {r.get('fgsm_rs_over_pytorch', float('nan')):.2f} | "
                        f"{r['pytorch_fgsm_rs']['label']} |")
  if torch_rows:
    lines += ['', 'Plain PyTorch FGSM-RS step (float32, same model, width and augmentation):', '',
              '| batch | images/s | fat_jax FGSM-RS / PyTorch | PyTorch |',
              '|---:|---:|---:|---|'] + torch_rows
  return lines


def eval_table(parts: list[dict]) -> list[str]:
  part = next((p for p in parts if p['name'] == 'eval'), None)
  if part is None:
    return []
  if 'result' not in part:
    return [f"Evaluation throughput: {part['status']}."]
  r = part['result']
  lines = [f"Evaluation throughput: {r['model']}, {r['dtype']}, n {r['n']}, ε {r['eps']:.5f}, "
           f"batch {r['batch_size']} (fresh model labelled by its own predictions: every point "
           'survives, the worst case for cost; compilation subtracted).', '',
           '| suite | attacks | run (s) | points/s | fwd/point | bwd/point | robust acc. | '
           'compile (s) |', '|---|---|---:|---:|---:|---:|---:|---:|']
  for name, s in r['suites'].items():
    o = s['settings']
    attacks = (f"PGD-{o['pgd_steps']}-{o['pgd_restarts']}" if name.startswith('pgd') else
               f"APGD {o['apgd_steps']}, FAB-T {o['fab_steps']}, Square {o['square_queries']}")
    lines.append(f"| {name} | {attacks} | {s['run_s']:.1f} | {s['points_per_s']:.2f} | "
                 f"{s['forward_per_point']:.0f} | {s['backward_per_point']:.0f} | "
                 f"{s['robust_accuracy']:.3f} | {s['compile_s']:.1f} |")
  lines += [''] + [f"AA-standard / PGD run time ({norm}): {ratio:.2f}×"
                   for norm, ratio in r['aa_over_pgd_run_time'].items()]
  return lines


def input_table(parts: list[dict]) -> list[str]:
  """The streaming input path's images/s next to the training step's (input_throughput.py)."""
  part = next((p for p in parts if p['name'] == 'input'), None)
  if part is None:
    return []
  if 'result' not in part:
    return [f"Input path: {part['status']}."]
  r = part['result']
  return [f"Input path ({r['layout']} JPEGs, batch {r['batch_size']}, {r['workers']} grain "
          f"workers): {r['input_images_per_s']:.0f} images/s "
          f"({r['input_with_startup_images_per_s']:.0f} with the start-up); FGSM-RS step "
          f"(PreActResNet-18 "
          f"width {r['width']}) {r['step_images_per_s']:.0f} images/s; input / step "
          f"{r['input_over_step']:.2f}" + (' (the loader starves the device).'
                                           if r['input_over_step'] < 1 else '.')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out')
  parser.add_argument('--smoke', action='store_true')
  args = parser.parse_args()
  parts = read_parts(args.out)
  done = [p['result'] for p in parts if 'result' in p]
  device = (f"{done[0]['devices']} × {done[0]['device_kind']} ({done[0]['backend']}), "
            f"jax {done[0]['jax']}") if done else 'unknown device (no part finished)'
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  results = {'smoke': args.smoke, 'date': stamp, 'device': device, 'parts': parts}
  with open(os.path.join(args.out, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  step = next((r for r in done if 'methods' in r), None)
  title = (f"Training steps: median of {step['rounds']} rounds × {step['steps']} steps, one "
           'device' if step else 'Training steps')
  lines = ([SMOKE_NOTE, ''] if args.smoke else []) + [
      f'`bash benchmarks/gpu.sh{" --smoke" if args.smoke else ""}`, {stamp}, {device}.', '',
      'Parts: ' + ', '.join(f"{p['name']} {p['seconds']} s" + ('' if 'result' in p else
                                                               f" ({p['status']})")
                            for p in parts) + '.', '', title + ':', ''] + step_table(parts)
  lines += [''] + eval_table(parts)
  lines += [''] + input_table(parts)
  with open(os.path.join(args.out, 'table.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
