"""Sharded statistics equal the whole tensors' with one all-reduce, on 2 real processes (gloo), without a Trainer."""

from __future__ import annotations

import json
import socket

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
