"""Batch scores equal online scores: `batch-predict` against a real `bentoml serve` of the same
model version, over the v2 protocol, for the same rows."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.servers import model_server
from training.data import MERCHANT_CATEGORIES, features_matrix, generate
from workflows.batch import batch_predict, merge_parts, part_paths

pytestmark = pytest.mark.slow
ROWS = 1_200


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return generate(ROWS, seed=23)


@pytest.fixture(scope="module")
def online(trained, rows) -> tuple[np.ndarray, set[str]]:
    """The server's scores for every row: most in requests of 200 rows, some one row at a time
    (a lone transaction, as the router sends it), with the versions the server named."""
    x = features_matrix(rows)
    scores, versions = [], set()
    with model_server(trained[1]) as base, httpx.Client(base_url=base, timeout=30) as client:

        def infer(part: np.ndarray) -> list[float]:
            body = {
                "inputs": [
                    {
                        "name": "features",
                        "shape": list(part.shape),
                        "datatype": "FP32",
                        "data": part.ravel().tolist(),
                    }
                ]
            }
            resp = client.post("/v2/models/fraud/infer", json=body)
            assert resp.status_code == 200, resp.text
            versions.add(resp.headers["x-turnout-model-version"])
            out = resp.json()["outputs"][0]
            assert out["name"] == "probability" and out["datatype"] == "FP32"
            return [float(v) for v in out["data"]]

        for i in range(40):
            scores += infer(x[i : i + 1])
        for start in range(40, ROWS, 200):
            scores += infer(x[start : start + 200])
    return np.asarray(scores, dtype=np.float32), versions


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_batch_scores_equal_the_model_servers(trained, rows, online, tmp_path, fmt: str) -> None:
    path = tmp_path / f"rows.{fmt}"
    if fmt == "csv":  # categories by name, as a user's export would have them
        named = [MERCHANT_CATEGORIES[c] for c in rows.merchant_category]
        rows.assign(merchant_category=named).to_csv(path, index=False)
    else:
        rows.to_parquet(path)
    out = tmp_path / f"scored.{fmt}"

    batch_predict(model=trained[1], input=path, output=out, chunk_rows=500)

    scored = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    expected, versions = online
    assert len(scored) == ROWS
    np.testing.assert_allclose(scored["probability"], expected, rtol=0, atol=1e-6)
    assert set(scored["model_version"]) == versions == {"v1"}


def test_fanned_out_batch_equals_the_model_server(trained, rows, online, tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    rows.to_parquet(path, row_group_size=250)
    out = tmp_path / "scored.parquet"
    for i in range(4):
        batch_predict(model=trained[1], input=path, output=out, chunk_index=i, chunk_count=4)
    merge_parts(part_paths(out, 4), out)

    np.testing.assert_allclose(pd.read_parquet(out)["probability"], online[0], rtol=0, atol=1e-6)
    parts = [p.name for p in part_paths(out, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["rows.parquet", out.name, *parts])
