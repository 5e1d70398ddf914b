"""``lossd.evaluate`` on Dask: a real ``distributed.LocalCluster`` of 2 worker processes
(started once for the module, as ``--workers 2`` starts it) gives the single-process
kernels' summary for Parquet pieces, IPC and CSV files and a ``dask.dataframe``, with
weights and by; a worker killed mid-run is replaced, its task retried and the answer
unchanged; an error in a worker names the row within its file; ``lossd eval --workers 2``
end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.feather as feather  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import lossd  # noqa: E402
from lossd import kernels  # noqa: E402
from lossd.evaluation import on_dask  # noqa: E402

from service_helpers import LOSSD, ROOT, server_env  # noqa: E402
from eval_helpers import BATCH, N, arrays, assert_same, assert_same_groups, make_table  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """The scheduler's address of 2 one-thread worker processes (lossd's own LocalCluster)."""
    with on_dask.client_for(None, 2) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="module")
def address(cluster) -> str:
    return cluster.scheduler.address


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_table()


@pytest.fixture(scope="module")
def files(table, tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("eval-dask")
    pq.write_table(table, d / "data.parquet", row_group_size=5_000)  # 8 row groups: several pieces
    feather.write_feather(table, str(d / "data.arrow"), chunksize=6_000)
    for i in range(3):
        pacsv.write_csv(table.slice(i * (N // 3), N // 3 + (N % 3 if i == 2 else 0)), d / f"part{i}.csv")
    return {"parquet": str(d / "data.parquet"), "ipc": str(d / "data.arrow"),
            "csv": [str(d / f"part{i}.csv") for i in range(3)], "dir": d}


def test_workers_share_this_process_numba_cache(cluster):
    dirs = cluster.run(lambda: os.environ.get("NUMBA_CACHE_DIR"))
    assert len(dirs) == 2 and set(dirs.values()) == {os.environ["NUMBA_CACHE_DIR"]}, dirs
    assert set(cluster.nthreads().values()) == {1}


def test_parquet_pieces_on_two_workers_give_the_kernels_summary(files, table, address):
    a = arrays(table)
    got = lossd.evaluate(files["parquet"], predictions="p", labels="y", weights="w", by="g",
                         scheduler=address, batch_rows=BATCH)
    want = kernels.summarize(a["p"], a["y"], sample_weight=a["w"], by=a["g"])
    assert_same_groups(got, want)
    local = lossd.evaluate(files["parquet"], predictions="p", labels="y", weights="w", by="g", batch_rows=BATCH)
    assert_same_groups(got, local)


@pytest.mark.parametrize("kind", ["ipc", "csv"])
def test_ipc_and_csv_files_on_dask(files, table, address, kind):
    a = arrays(table)
    got = lossd.evaluate(files[kind], predictions="p", labels="y", by="s", scheduler=address,
                         loss="squared_error")
    want = kernels.summarize(a["p"], a["y"], by=a["s"].astype(object), loss="squared_error")
    assert_same_groups(got, want)


def test_a_dask_dataframe(files, table, address):
    a = arrays(table)
    ddf = dd.read_parquet(files["parquet"], split_row_groups=True)
    assert ddf.npartitions > 2
    got = lossd.evaluate(ddf, predictions="p", labels="y", weights="w", scheduler=address)
    assert_same(got, kernels.summarize(a["p"], a["y"], sample_weight=a["w"]))


def _killing_loader(spec: tuple[int, int, str, str]) -> pd.DataFrame:
    """Partition ``i`` of the table; partition 2 kills its worker process (SIGKILL, no
    clean-up) the first time it runs, leaving a marker file so that the retry succeeds."""
    i, rows, path, marker = spec
    if i == 2 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    t = pq.read_table(path).slice(i * rows, rows)
    return t.select(["p", "y", "g"]).to_pandas()


def test_a_worker_killed_mid_run_is_retried_and_the_answer_unchanged(files, table, cluster, address, tmp_path):
    a = arrays(table)
    marker = tmp_path / "killed"
    rows = N // 8
    ddf = dd.from_map(_killing_loader, [(i, rows, files["parquet"], str(marker)) for i in range(8)],
                      meta=pd.DataFrame({"p": pd.Series([], dtype="float64"), "y": pd.Series([], dtype="float64"),
                                         "g": pd.Series([], dtype="int64")}))
    before = set(cluster.scheduler_info()["workers"])
    got = lossd.evaluate(ddf, predictions="p", labels="y", by="g", scheduler=address)
    assert marker.exists(), "the killing partition never ran"
    assert_same_groups(got, kernels.summarize(a["p"], a["y"], by=a["g"]))
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert set(cluster.scheduler_info()["workers"]) != before


def test_an_error_in_a_worker_names_the_row_within_its_file(files, table, address, tmp_path):
    y = arrays(table)["y"].copy()
    y[33_333] = -1.0
    path = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(1, "y", pa.array(y)), path, row_group_size=5_000)
    with pytest.raises(kernels.InputError) as info:
        lossd.evaluate(str(path), predictions="p", labels="y", scheduler=address, batch_rows=BATCH)
    assert info.value.index == (33_333,) and info.value.argument == "labels"
    assert str(info.value).startswith("labels[33333] = -1 is outside [0, 1]") and str(path) in str(info.value)


def test_cli_workers_2_equals_local(files):
    def run(*extra: str) -> dict:
        r = subprocess.run([str(LOSSD), "eval", files["parquet"], "--predictions", "p", "--labels", "y",
                            "--by", "g", "--format", "json", *extra], capture_output=True, text=True,
                           timeout=180, cwd=ROOT, env=server_env())
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout)

    on_cluster, local = run("--workers", "2"), run()
    assert [g["key"] for g in on_cluster["groups"]] == [g["key"] for g in local["groups"]] == list(range(7))
    for c, l in zip(on_cluster["groups"], local["groups"]):
        assert c["count"] == l["count"] and c["min"] == l["min"] and c["max"] == l["max"]
        assert np.isclose(float(c["mean"]), float(l["mean"]), rtol=1e-14, atol=0)
