"""Sharding on 8 simulated CPU devices, and two real processes joined by jax.distributed.

Each case runs in a fresh process, since the device count is fixed when JAX starts."""

import json
import os
import socket
import sqlite3
import subprocess
import sys

import numpy as np

from conftest import jscale_cmd

SCRIPT = r'''
import json, sys
import jax
from jscale import config, data, resolve, train

class Memory:
    def __init__(self): self.records, self.steps = [], []
    def last_step(self): return max((r[0]["step"] for r in self.steps), default=0)
    def resume(self, step): pass
    def record(self, records):
        self.records.append([(r["train_loss"], r["test_loss"]) for r in records])
        self.steps.append(records)

def cfg(**parallel):
    return resolve.resolve(config.from_dict({
        "model": {"n_layer": 1, "d_model": 32, "n_heads": 4, "n_ctx": 16},
        "data": {"eval_windows": 16},
        "train": {"batch_size": 16, "steps": 12, "lr": 3e-3, "warmup_steps": 2, "eval_every": 4,
                  "checkpoint_every": 12},
        "parallel": parallel}))

out = {"devices": jax.device_count()}
corpus = data.prepare(cfg().data)
cases = {"one_device": ({}, jax.devices()[:1]), "data8": ({"data": 8}, None), "fsdp8": ({"data": 1, "fsdp": 8}, None),
         "data2_fsdp2_tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, None)}
for name, (parallel, devices) in cases.items():
    sink = Memory()
    train.train_loop([cfg(**parallel)], ["r"], corpus, __import__("pathlib").Path(sys.argv[1]) / name, sink,
                     stacked=False, devices=devices)
    out[name] = sink.records
import dataclasses
members = [cfg()] + [config.Config(**{**cfg().__dict__, "train": dataclasses.replace(cfg().train, seed=s, lr=l)})
                     for s, l in ((1, 1e-3), (2, 2e-3), (3, 3e-3), (4, 1e-3), (5, 2e-3), (6, 3e-3), (7, 1e-3))]
for name, devices in (("ensemble_one_device", jax.devices()[:1]), ("ensemble8", None)):
    sink = Memory()
    train.train_loop(members, [str(i) for i in range(8)], corpus, __import__("pathlib").Path(sys.argv[1]) / name,
                     sink, stacked=True, devices=devices)
    out[name] = sink.records
if len(sys.argv) > 2:  # also report how the parameters were laid out
    from jscale import sharding
    from jscale.models import build
    import jax.numpy as jnp
    c = cfg(data=2, fsdp=2, tensor=2)
    model, opt = build(c.model), train.make_optimizer(c.train)
    abstract = jax.eval_shape(lambda: train.init_state(model, opt, 16, jnp.uint32(0)))
    sh = sharding.state_shardings(abstract, sharding.make_mesh(c.parallel), stacked=False)
    out["specs"] = {"c_attn": list(sh.params["h_0"]["attn"]["c_attn"]["kernel"].spec),
                    "c_proj": list(sh.params["h_0"]["mlp"]["c_proj"]["kernel"].spec),
                    "mu_c_fc": list(sh.opt_state.mu["h_0"]["mlp"]["c_fc"]["kernel"].spec),
                    "ln": list(sh.params["ln_f"]["scale"].spec)}
print("RESULT " + json.dumps(out))
'''


def test_data_fsdp_tensor_and_ensemble_sharding_match_one_device(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"}
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), "specs"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ")[1])
    assert out["devices"] == 8
    ref = np.array(out["one_device"])
    assert ref.shape == (3, 1, 2)
    for case in ("data8", "fsdp8", "data2_fsdp2_tensor2"):
        # Same numbers up to float32 rounding: the sharded reductions sum in another order.
        np.testing.assert_allclose(np.array(out[case]), ref, rtol=2e-5, err_msg=case)
    np.testing.assert_allclose(np.array(out["ensemble8"]), np.array(out["ensemble_one_device"]), rtol=2e-5)
    # Column-parallel in, row-parallel out, FSDP over d_model; AdamW's moments follow their parameters.
    assert out["specs"] == {"c_attn": ["fsdp", "tensor"], "c_proj": ["tensor", "fsdp"], "mu_c_fc": ["fsdp", "tensor"],
                            "ln": [None]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SWEEP = """
name = "two_hosts"
[base.model]
n_layer = 1
d_model = 32
n_heads = 2
n_ctx = 32
[base.data]
eval_windows = 8
[base.train]
batch_size = 8
steps = 20
lr = 3e-3
warmup_steps = 2
eval_every = 10
checkpoint_every = 10
[[axis]]
key = "train.seed"
values = [0, 1]
"""


def test_two_processes_train_one_sweep_and_only_process_0_writes(tmp_path, jscale_here):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(jscale_cmd("run", str(spec), "--out", str(tmp_path / "multi"), "--quiet",
                                         "--ensemble-size", "2", "--coordinator", f"127.0.0.1:{port}",
                                         "--num-processes", "2", "--process-id", str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "done:" in outs[0][0] and "done:" not in outs[1][0]  # process 1 prints and writes nothing
    jscale_here("run", str(spec), "--out", str(tmp_path / "single"), "--quiet", "--ensemble-size", "2", check=0)
    q = "SELECT run_id, step, train_loss, test_loss FROM curves ORDER BY run_id, step"
    with sqlite3.connect(tmp_path / "multi" / "results.sqlite") as a, \
            sqlite3.connect(tmp_path / "single" / "results.sqlite") as b:
        multi, single = a.execute(q).fetchall(), b.execute(q).fetchall()
    assert [r[:2] for r in multi] == [r[:2] for r in single] and len(multi) == 4
    np.testing.assert_allclose([r[2:] for r in multi], [r[2:] for r in single], rtol=2e-5)
