"""Sharded statistics equal the whole tensors' with one all-reduce, on 2 real processes (gloo), without a Trainer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sharded_worker
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded")
    mp.start_processes(sharded_worker.run, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fsdp1", "fsdp2"])
def test_pieces_measure_as_the_whole_tensors_on_every_process(records, layout):
    for record in records:
        whole, pieces = record["reference"]["measurement"], record[layout]["measurement"]
        assert record[layout]["sharded"]
        assert pieces["names"] == whole["names"] == ["0", "2", "3"]
        for key in ("grad_norm", "param_norm", "update_norm"):
            np.testing.assert_allclose(pieces[key], whole[key], rtol=1e-6, err_msg=key)
        np.testing.assert_array_equal(pieces["histograms"], whole["histograms"])
        np.testing.assert_allclose(record[layout]["magnitudes"], record["reference"]["magnitudes"], rtol=1e-6)
        assert record[layout]["measure_collectives"] == ["c10d.allreduce_.default"]  # one, for everything
        assert record[layout]["magnitude_collectives"] == ["c10d.allgather_.default"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fsdp1", "fsdp2"])
def test_a_nan_in_one_piece_is_seen_by_every_process(records, layout):
    for record in records:
        assert record[layout]["finite_before"] is True
        assert record[layout]["finite_after"] is False  # the guard agrees, though rank 0's pieces are finite
        nan = record[layout]["nan_measurement"]
        assert np.isnan(nan["grad_norm"][0])
        assert nan["nonfinite"] == [1, 0, 0]


@pytest.mark.slow
def test_layouts_that_cannot_be_measured_whole_are_refused(records):
    refused = records[0]["refused"]
    assert refused["partial"] == "a parameter with a Partial placement (unreduced values) has no norm to measure"
    assert refused["two meshes"].startswith("parameters on several device meshes")


FABRIC = Path(__file__).with_name("fabric_fit.py")


def fabric_fit(out: Path, devices: int) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(FABRIC), "--devices", str(devices), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(devices)]


@pytest.mark.slow
def test_a_fabric_loop_under_fsdp2_measures_the_user_modules_as_one_process_does(tmp_path):
    rank0, rank1 = fabric_fit(tmp_path / "fsdp", 2)
    (alone,) = fabric_fit(tmp_path / "single", 1)
    assert rank0["layers"] == alone["layers"] == ["0", "2", "4"]  # the user's paths, not Fabric's wrapper's
    assert rank0["history"] == rank1["history"]
    for layer, norms in alone["history"].items():
        np.testing.assert_allclose(rank0["history"][layer], norms, rtol=1e-5, err_msg=layer)
    assert rank0["metrics"]["grad/norm_total"] == pytest.approx(alone["metrics"]["grad/norm_total"], rel=1e-5)
