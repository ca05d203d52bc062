"""Batch scoring of CSV and Parquet files: what a user gets back, in chunks, fanned out, or not
at all when the input is bad. (Batch against the real model server: tests/integration.)"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from training import store
from training.data import FRAUD_SCHEMA, MERCHANT_CATEGORIES, features_matrix, generate
from training.model import predict_proba
from workflows import batch_cli
from workflows.batch import (
    DEFAULT_CHUNK_ROWS,
    batch_predict,
    merge_parts,
    part_path,
    part_paths,
    share,
)
from workflows.batch_cli import batch_merge_command, batch_predict_command

ROWS = 2_500


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    df = generate(ROWS, seed=11)
    # extra columns pass through, free text included (commas, quotes, line breaks)
    df.insert(0, "txn_id", [f"t{i:05d}" for i in range(ROWS)])
    df.insert(1, "note", ['said "hi",\nthen left' if i % 7 == 0 else "ok" for i in range(ROWS)])
    return df


@pytest.fixture(scope="module")
def expected(trained, rows) -> np.ndarray:
    return predict_proba(store.load(trained[1]).net, features_matrix(rows))


@pytest.fixture(scope="module")
def files(rows, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rows.to_csv(d / "rows.csv", index=False)
    rows.to_parquet(d / "rows.parquet", row_group_size=700)  # several row groups
    return {"csv": d / "rows.csv", "parquet": d / "rows.parquet"}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal apart from float32 rounding of the scores (a forward pass over a different batch
    may round the last bit differently)."""
    pd.testing.assert_frame_equal(a.drop(columns="probability"), b.drop(columns="probability"))
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=0, atol=1e-6)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- what comes out ---------------------------------------------------------------------------


@pytest.mark.parametrize("src", ["csv", "parquet"])
@pytest.mark.parametrize("dst", ["csv", "parquet"])
def test_every_row_comes_back_in_order_with_its_probability(
    trained, rows, expected, files, tmp_path, src: str, dst: str
) -> None:
    out = tmp_path / f"scored.{dst}"
    result = batch_predict(model=trained[1], input=files[src], output=out, chunk_rows=1000)

    assert result.rows == ROWS and result.output == out and result.rows_per_s > 0
    got = read(out)
    assert list(got.columns) == [*rows.columns, "probability", "model_version"]
    assert got["txn_id"].tolist() == rows["txn_id"].tolist()
    assert got["note"].tolist() == rows["note"].tolist()
    pd.testing.assert_frame_equal(
        got[FRAUD_SCHEMA.names], rows[FRAUD_SCHEMA.names], check_dtype=False
    )
    np.testing.assert_allclose(got["probability"], expected, rtol=0, atol=1e-6)
    assert set(got["model_version"]) == {"v1"}
    assert leftovers(tmp_path) == [out.name]  # no temporary file left


def test_csv_pass_through_columns_keep_their_text(trained, rows, tmp_path) -> None:
    """An account number's leading zeros survive: only feature columns are parsed."""
    df = rows.head(50).copy()
    df.insert(0, "account", [f"{i:08d}" for i in range(50)])
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    df.to_csv(src, index=False)
    batch_predict(model=trained[1], input=src, output=out)
    assert pd.read_parquet(out)["account"].tolist() == df["account"].tolist()


def test_parquet_output_types(trained, files, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "scored.parquet"
    batch_predict(model="fraud:latest", input=files["parquet"], output=out)
    schema = pq.read_schema(out)
    assert schema.field("probability").type == pa.float32()
    assert schema.field("model_version").type == pa.string()


def test_categories_by_name_score_like_their_codes(trained, rows, expected, tmp_path) -> None:
    # every other row by name, the rest by code: a CSV column mixing both reads as text
    mixed = [MERCHANT_CATEGORIES[c] if i % 2 else c for i, c in enumerate(rows.merchant_category)]
    named = rows.assign(merchant_category=mixed)
    named.to_csv(tmp_path / "named.csv", index=False)
    batch_predict(model=trained[1], input=tmp_path / "named.csv", output=tmp_path / "out.parquet")
    got = read(tmp_path / "out.parquet")
    assert got["merchant_category"].tolist() == [str(c) for c in mixed]
    np.testing.assert_allclose(got["probability"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("src", ["csv", "parquet"])
def test_chunk_size_does_not_change_scores(trained, files, tmp_path, src: str) -> None:
    whole = batch_predict(model=trained[1], input=files[src], output=tmp_path / "a.parquet")
    small = batch_predict(
        model=trained[1], input=files[src], output=tmp_path / "b.parquet", chunk_rows=97
    )
    assert whole.rows == small.rows == ROWS
    assert_same_rows(read(whole.output), read(small.output))


# --- fan-out ----------------------------------------------------------------------------------


@given(rows=st.integers(0, 10_000), count=st.integers(1, 64))
def test_shares_are_contiguous_in_order_and_cover_every_row_once(rows: int, count: int) -> None:
    bounds = [share(rows, index=i, count=count) for i in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_part_names_sort_in_order_next_to_the_output() -> None:
    out = Path("/work/out/scores.parquet")
    assert part_path(out, index=3, count=8) == Path("/work/out/scores.part-00003-of-00008.parquet")
    names = [p.name for p in part_paths(out, 12)]
    assert names == sorted(names)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_fanned_out_parts_merge_into_the_whole(trained, files, tmp_path, fmt: str, count: int):
    whole = batch_predict(model=trained[1], input=files[fmt], output=tmp_path / f"whole.{fmt}")
    out = tmp_path / "fan" / f"scores.{fmt}"
    for i in reversed(range(count)):  # pods finish in any order
        part = batch_predict(
            model=trained[1], input=files[fmt], output=out, chunk_index=i, chunk_count=count
        )
        assert part.output == part_path(out, index=i, count=count)
        assert (
            part.rows == share(ROWS, index=i, count=count)[1] - share(ROWS, index=i, count=count)[0]
        )
    merged = merge_parts(part_paths(out, count), out)

    assert merged.rows == ROWS
    assert_same_rows(read(out), read(whole.output))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_more_pods_than_rows_leaves_empty_parts_that_still_merge(trained, rows, tmp_path, fmt):
    small = tmp_path / f"three.{fmt}"
    getattr(rows.head(3), "to_csv" if fmt == "csv" else "to_parquet")(small, index=False)
    out = tmp_path / f"scored.{fmt}"
    counts = [
        batch_predict(model=trained[1], input=small, output=out, chunk_index=i, chunk_count=5).rows
        for i in range(5)
    ]
    assert sorted(counts) == [0, 0, 1, 1, 1]
    merge_parts(part_paths(out, 5), out)
    got = read(out)
    assert got["txn_id"].tolist() == ["t00000", "t00001", "t00002"]
    assert list(got.columns)[-2:] == ["probability", "model_version"]


def test_merge_names_a_missing_part(trained, files, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    batch_predict(
        model=trained[1], input=files["parquet"], output=out, chunk_index=0, chunk_count=2
    )
    with pytest.raises(ValueError, match=r"scores\.part-00001-of-00002\.parquet: part not found"):
        merge_parts(part_paths(out, 2), out)
    assert not out.exists()


# --- bad input: a clear error, and no output --------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(rows, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {}

    def csv(name: str, df: pd.DataFrame) -> None:
        df.to_csv(d / name, index=False)
        out[name] = d / name

    csv("missing_column.csv", rows.drop(columns="hour"))
    early = rows.astype({"amount": object})
    early.loc[3, "amount"] = "twelve"
    csv("word_early.csv", early)
    late = rows.astype({"amount": object})
    late.loc[2_300, "amount"] = "twelve"  # after the first chunks were scored and written
    csv("word_late.csv", late)
    gap = rows.copy()
    gap.loc[1_200, "device_trust"] = np.nan
    csv("gap.csv", gap)
    unknown = rows.astype({"channel": object})
    unknown.loc[1_500, "channel"] = "carrier-pigeon"
    csv("unknown_category.csv", unknown)
    csv("has_probability.csv", rows.assign(probability=0.5))
    (d / "empty.csv").write_text("")
    out["empty.csv"] = d / "empty.csv"
    csv("header_only.csv", rows.head(0))
    (d / "table.xlsx").write_text("x")
    out["table.xlsx"] = d / "table.xlsx"
    broken = d / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    out["broken.parquet"] = broken
    return out


BAD_INPUTS = [
    ("missing_column.csv", r"missing_column\.csv: missing column 'hour'"),
    ("word_early.csv", r"word_early\.csv: column 'amount' must be numeric; row 3 has 'twelve'"),
    ("word_late.csv", r"word_late\.csv: column 'amount' must be numeric; row 2300 has 'twelve'"),
    ("gap.csv", r"gap\.csv: column 'device_trust' has a missing value at row 1200"),
    (
        "unknown_category.csv",
        r"unknown_category\.csv: column 'channel' row 1500 has 'carrier-pigeon', expected one of",
    ),
    ("has_probability.csv", r"has a column 'probability', which the output adds"),
    ("empty.csv", r"empty\.csv: file is empty"),
    ("header_only.csv", r"header_only\.csv: file has no rows"),
    ("table.xlsx", r"table\.xlsx: unsupported file type '\.xlsx'"),
    ("broken.parquet", r"broken\.parquet: cannot read file"),
    ("nope.csv", r"nope\.csv: file not found"),
]


@pytest.mark.parametrize(("name", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_problem_and_writes_nothing(
    trained, bad_files, tmp_path, name: str, message: str
) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        batch_predict(
            model=trained[1],
            input=bad_files.get(name, tmp_path / name),
            output=out_dir / "s.parquet",
            chunk_rows=1000,
        )
    assert not out_dir.exists() or leftovers(out_dir) == []


def test_a_failed_run_keeps_the_previous_output(trained, bad_files, files, tmp_path) -> None:
    out = tmp_path / "scores.csv"
    batch_predict(model=trained[1], input=files["csv"], output=out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="row 2300"):
        batch_predict(
            model=trained[1], input=bad_files["word_late.csv"], output=out, chunk_rows=500
        )
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == ["scores.csv"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("fraud:v404", "model fraud:v404 not found in the model store"),
        ("Not A Tag!", "is not a valid BentoML tag"),
        ("fraud:", "trailing ':'"),
    ],
)
def test_unknown_model_is_named(trained, files, tmp_path, model: str, message: str) -> None:
    with pytest.raises(LookupError, match=message):
        batch_predict(model=model, input=files["csv"], output=tmp_path / "s.csv")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "s.txt"}, r"s\.txt: unsupported file type '\.txt'"),
        ({"chunk_rows": 0}, "chunk_rows must be at least 1"),
        ({"chunk_index": 1}, "chunk_index and chunk_count go together"),
        ({"chunk_index": 4, "chunk_count": 4}, r"chunk_index must be in 0\.\.3, got 4"),
    ],
)
def test_bad_parameters_are_named(trained, files, tmp_path, kwargs, message: str) -> None:
    kwargs = {"output": "s.csv", **kwargs}
    kwargs["output"] = tmp_path / kwargs["output"]
    with pytest.raises(ValueError, match=message):
        batch_predict(model=trained[1], input=files["csv"], **kwargs)
    assert leftovers(tmp_path) == []


def test_output_may_not_overwrite_the_input(trained, files, tmp_path) -> None:
    copy = tmp_path / "rows.parquet"
    copy.write_bytes(files["parquet"].read_bytes())
    with pytest.raises(ValueError, match="would overwrite the input"):
        batch_predict(model=trained[1], input=copy, output=copy)
    assert copy.read_bytes() == files["parquet"].read_bytes()


# --- the command line -------------------------------------------------------------------------


def test_cli_scores_with_a_summary_line(trained, files, tmp_path) -> None:
    out = tmp_path / "s.parquet"
    res = CliRunner().invoke(
        batch_predict_command, [trained[1], str(files["parquet"]), str(out), "--chunk-rows", "500"]
    )
    assert res.exit_code == 0, res.output
    assert f"scored {ROWS:,} rows with fraud:v1 in " in res.stdout
    assert "rows/s) -> " in res.stdout and len(res.stdout.splitlines()) == 1
    assert "scoring rows.parquet" in res.stderr  # the progress bar, on stderr
    assert len(read(out)) == ROWS


def test_cli_fan_out_and_merge(trained, files, tmp_path) -> None:
    import json

    out = tmp_path / "s.csv"
    runner = CliRunner()
    for i in range(3):
        args = [trained[1], str(files["csv"]), str(out), "--chunk-index", str(i)]
        res = runner.invoke(batch_predict_command, [*args, "--chunk-count", "3", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["output"] == str(part_path(out, index=i, count=3))
    res = runner.invoke(batch_merge_command, [str(out), "--chunk-count", "3", "--remove-parts"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"merged 3 parts ({ROWS:,} rows)")
    assert leftovers(tmp_path) == ["s.csv"]
    assert len(read(out)) == ROWS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fraud:v1", "{csv}", "{out}", "--chunk-index", "1"], "go together"),
        (
            ["fraud:v1", "{csv}", "{out}", "--chunk-index", "3", "--chunk-count", "3"],
            "--chunk-index",
        ),
        (["fraud:v1", "{csv}", "{out}", "--chunk-rows", "0"], "--chunk-rows"),
        (["fraud:v9", "{csv}", "{out}"], "Error: model fraud:v9 not found"),
        (["fraud:v1", "{tmp}/nope.csv", "{out}"], "nope.csv: file not found"),
    ],
)
def test_cli_errors_are_one_clear_line(trained, files, tmp_path, args, message: str) -> None:
    out = tmp_path / "out" / "s.csv"
    argv = [a.format(csv=files["csv"], out=out, tmp=tmp_path) for a in args]
    res = CliRunner().invoke(batch_predict_command, argv)
    assert res.exit_code != 0
    assert message in res.output
    assert not out.parent.exists()


def test_cli_default_chunk_matches_the_library() -> None:
    assert batch_cli.DEFAULT_CHUNK_ROWS == DEFAULT_CHUNK_ROWS
