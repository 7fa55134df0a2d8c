"""A run's files in its workdir: ``config.json``, ``metrics.jsonl`` (one JSON
record per epoch), ``results.json`` (the final evaluation) and ``report/report.md``
(`fat_jax.report`)."""
from __future__ import annotations

import json
import os

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
REPORT = os.path.join('report', 'report.md')


def append_record(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, METRICS), 'a') as f:
    f.write(json.dumps(record) + '\n')


def read_records(workdir: str, up_to_epoch: int | None = None) -> list[dict]:
  """The epoch records, keeping only epochs ≤ `up_to_epoch` (rewriting the file)."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if up_to_epoch is not None:
    records = [r for r in records if r['epoch'] <= up_to_epoch]
    with open(path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
  return records


def write_json(workdir: str, name: str, obj: dict) -> str:
  path = os.path.join(workdir, name)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def read_json(workdir: str, name: str):
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
