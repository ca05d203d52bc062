"""The synthetic world and the loader for a user's own data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import data
from training.data import FRAUD_SCHEMA, DataError, Drift, generate, load_table
from turnout.core import drift as psi


def test_generator_has_the_promised_shape() -> None:
    df = generate(50_000, seed=3)
    kinds = [f.kind for f in FRAUD_SCHEMA.features]
    assert len(FRAUD_SCHEMA.features) >= 12 and "categorical" in kinds
    assert list(df.columns) == [*FRAUD_SCHEMA.names, "is_fraud"]
    assert 0.01 <= df["is_fraud"].mean() <= 0.03
    for f in FRAUD_SCHEMA.features:
        if f.kind == "categorical":
            assert set(df[f.name].unique()) <= set(range(len(f.categories)))


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert generate(1000, seed=5).equals(generate(1000, seed=5))
    assert not generate(1000, seed=5).equals(generate(1000, seed=6))
    assert data.fingerprint(generate(1000, seed=5)) == data.fingerprint(generate(1000, seed=5))


def _amount_psi(df_ref: pd.DataFrame, df: pd.DataFrame) -> float:
    ref = psi.numeric_reference(df_ref["amount"].to_numpy())
    return psi.psi_of_values(ref, df["amount"].to_numpy())


def test_covariate_shift_moves_inputs_gradually_or_suddenly() -> None:
    base = generate(20_000, seed=1, day=0)
    gradual = Drift(covariate=1.0, mode="gradual", start_day=10, ramp_days=20)
    sudden = Drift(covariate=1.0, mode="sudden", start_day=10)
    before = _amount_psi(base, generate(20_000, seed=2, day=5, drift=gradual))
    halfway = _amount_psi(base, generate(20_000, seed=2, day=20, drift=gradual))
    full = _amount_psi(base, generate(20_000, seed=2, day=40, drift=gradual))
    assert before < psi.PSI_WARN < halfway < full
    assert _amount_psi(base, generate(20_000, seed=2, day=10, drift=sudden)) == pytest.approx(
        full, rel=0.3
    )


def test_concept_drift_changes_labels_not_inputs() -> None:
    """Same inputs, other rule: input PSI stays low while which rows are fraud changes."""
    base = generate(40_000, seed=4, day=0)
    drifted = generate(40_000, seed=4, day=0, drift=Drift(concept=1.0, mode="sudden"))
    assert _amount_psi(base, drifted) < 0.01
    by_cat_base = base.groupby("merchant_category")["is_fraud"].mean()
    by_cat_drift = drifted.groupby("merchant_category")["is_fraud"].mean()
    # The riskiest merchant category is a different one after the change.
    assert by_cat_base.idxmax() != by_cat_drift.idxmax()


def test_drift_spec_parses_and_rejects_nonsense() -> None:
    assert Drift.parse("covariate=0.5,mode=sudden,start_day=3") == Drift(
        covariate=0.5, mode="sudden", start_day=3
    )
    with pytest.raises(ValueError, match="unknown drift option 'speed'"):
        Drift.parse("speed=3")
    with pytest.raises(ValueError, match="gradual or sudden"):
        Drift.parse("mode=slow")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_loader_reads_names_or_codes(tmp_path, suffix: str) -> None:
    df = generate(200, seed=0)
    named = df.copy()
    named["channel"] = [data.CHANNELS[c] for c in df["channel"]]
    path = tmp_path / f"tx{suffix}"
    named.to_csv(path, index=False) if suffix == ".csv" else named.to_parquet(path)
    loaded = load_table(path)
    assert loaded["channel"].tolist() == df["channel"].tolist()
    np.testing.assert_allclose(loaded["amount"], df["amount"])


def test_loader_errors_name_the_file_and_the_column(tmp_path) -> None:
    df = generate(50, seed=0)
    missing = tmp_path / "missing.csv"
    df.drop(columns=["hour"]).to_csv(missing, index=False)
    with pytest.raises(DataError, match=r"missing\.csv: missing column 'hour'"):
        load_table(missing)

    wrong = tmp_path / "wrong.csv"
    bad = df.astype({"amount": object})
    bad.loc[3, "amount"] = "twelve"
    bad.to_csv(wrong, index=False)
    with pytest.raises(
        DataError, match=r"wrong\.csv: column 'amount' must be numeric; row 3 has 'twelve'"
    ):
        load_table(wrong)

    unknown = tmp_path / "unknown.csv"
    cat = df.astype({"channel": object})
    cat.loc[0, "channel"] = "carrier-pigeon"
    cat.to_csv(unknown, index=False)
    with pytest.raises(DataError, match=r"column 'channel' row 0 has 'carrier-pigeon'"):
        load_table(unknown)

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        load_table(empty)

    header_only = tmp_path / "header.csv"
    df.head(0).to_csv(header_only, index=False)
    with pytest.raises(DataError, match=r"header\.csv: file has no rows"):
        load_table(header_only)

    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        (tmp_path / "x.xlsx").write_text("x")
        load_table(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="file not found"):
        load_table(tmp_path / "nope.csv")
