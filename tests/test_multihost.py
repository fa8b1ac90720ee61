"""Two real JAX processes (CPU, gloo collectives) run the pretraining job as a 2-host cluster.

Each process has 2 CPU devices and builds only its half of every global batch; the test
checks the losses against global batches assembled here from the same stream slices, and
that the run checkpoints and resumes across processes.
"""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Iterator

import jax
import numpy as np
import pytest

from configs import pretrain
from snip_jax.data import pipeline
from snip_jax.symbolic.config import env_config_from
from snip_jax.train import trainer
from snip_jax.train.train_step import BATCH_KEYS, create_train_state, data_mesh, make_train_step

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4
FLAGS = ("--config.model.n_enc_layers=1", "--config.model.n_dec_layers=1",
         "--config.train.num_workers=0", "--config.train.log_every_steps=1",
         "--config.train.batch_size=8", "--config.eval.n_samples=8",
         "--config.eval.batch_size=8", "--config.train.checkpoint_every_steps=2",
         "--config.train.eval_every_steps=2")


@contextlib.contextmanager
def _reserved_port() -> Iterator[int]:
  """A free port, kept bound (SO_REUSEPORT, not listening) until the block ends.

  The coordinator's gRPC server binds [::]:port with SO_REUSEPORT too, so it can take the
  port while other binds and outgoing connections cannot: no window for another process to
  take it between finding the port and the coordinator binding it.
  """
  with socket.socket(socket.AF_INET6) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("::", 0))
    yield s.getsockname()[1]


def _launch_cluster(workdir, num_train_steps):
  """launch.py runlocal as processes 0 and 1 of a 2-process job; returns their outputs."""
  with _reserved_port() as port:
    processes = []
    for process_id in range(2):
      env = {**os.environ, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
             "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
             "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
             "JAX_PROCESS_ID": str(process_id)}
      command = [sys.executable, "launch.py", "--config=configs/pretrain.py:runlocal",
                 f"--workdir={workdir}", *FLAGS,
                 f"--config.train.num_train_steps={num_train_steps}"]
      processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
  return outputs


def _config():
  config = pretrain.get_config("runlocal")
  config.model.n_enc_layers = config.model.n_dec_layers = 1
  config.train.batch_size = 8
  return config


def _expected_losses(config, n_steps):
  """One process, the trainer's init, global batch k = [process 0's rows, process 1's rows].

  Full 200-column equations: multi-process runs do not trim equation padding.
  """
  env_cfg = env_config_from(config.env)
  model_cfg = trainer.model_config(config, env_cfg)
  mesh = data_mesh()
  init_rng, step_rng = jax.random.split(jax.random.key(config.train.seed))
  optimizer, schedule = trainer.make_optimizer(config.optim)
  tc = config.train
  state = create_train_state(model_cfg, trainer.initial_params(config, model_cfg, init_rng),
                             optimizer, learnable_temperature=tc.learnable_temperature)
  step = make_train_step(model_cfg, optimizer, mesh, lr_schedule=schedule,
                         learnable_temperature=tc.learnable_temperature)
  halves = [pipeline.generated_batches(env_cfg, seed=tc.seed, batch_size=tc.batch_size // 2,
                                       process_index=p, process_count=2) for p in range(2)]
  losses = []
  for k in range(n_steps):
    batch = {key: np.concatenate([half[k][key] for half in halves]) for key in BATCH_KEYS}
    state, metrics = step(state, batch, step_rng)
    losses.append(float(metrics["loss"]))
  return losses


def test_two_processes_train_on_their_batch_halves_and_resume(tmp_path):
  stdout, _ = _launch_cluster(tmp_path, STEPS // 2)[0]
  assert f"pretrain finished at step {STEPS // 2}" in stdout
  outputs = _launch_cluster(tmp_path, STEPS)
  assert "resumed from" in outputs[0][1] and "resumed from" in outputs[1][1]
  assert f"pretrain finished at step {STEPS}" in outputs[0][0]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == STEPS
  np.testing.assert_allclose(losses, _expected_losses(_config(), STEPS), rtol=2e-5)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == STEPS
  config_json = json.loads((tmp_path / "config.json").read_text())
  assert config_json["run_config"]["train"]["batch_size"] == 8
