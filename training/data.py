"""Data for the fraud model: the feature schema, a synthetic generator and a file loader.

The synthetic world is card transactions. Labels come from a hidden logistic rule plus noise,
so a model can learn most of it but not all. Two kinds of drift can be switched on, each
indexed by ``day`` so later stages can simulate the world changing:

- covariate shift: inputs move (bigger amounts, more online, other merchants), the rule stays;
- concept drift: the rule itself changes (fraud moves to other merchants and signals).

Either is ``gradual`` (ramps in over ``ramp_days`` from ``start_day``) or ``sudden`` (full
strength from ``start_day``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

LABEL = "is_fraud"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical"]
    #: Category names for a categorical feature; the model sees the index into this tuple.
    categories: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feature:
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            categories=tuple(str(c) for c in data.get("categories", ())),
            description=str(data.get("description", "")),
        )


@dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    label: str = LABEL

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        feats = data.get("features")
        if not isinstance(feats, list) or not feats:
            raise ValueError("schema needs a non-empty 'features' list")
        return cls(
            features=tuple(Feature.from_dict(f) for f in feats),
            label=str(data.get("label", LABEL)),
        )


MERCHANT_CATEGORIES = (
    "grocery",
    "fuel",
    "restaurant",
    "travel",
    "electronics",
    "online_retail",
    "gambling",
    "atm_cash",
)
CHANNELS = ("pos", "online", "atm")

FRAUD_SCHEMA = Schema(
    features=(
        Feature("amount", "numeric", description="transaction amount, EUR"),
        Feature("hour", "numeric", description="local hour of day, 0-23"),
        Feature("customer_age", "numeric", description="card holder age, years"),
        Feature("account_age_days", "numeric", description="days since account opening"),
        Feature("distance_km", "numeric", description="distance from home, km"),
        Feature("txn_count_24h", "numeric", description="transactions on the card in 24 h"),
        Feature("avg_amount_30d", "numeric", description="mean amount over 30 days"),
        Feature("amount_ratio", "numeric", description="amount / avg_amount_30d"),
        Feature("merchant_risk", "numeric", description="merchant risk score, 0-1"),
        Feature("device_trust", "numeric", description="device trust score, 0-1"),
        Feature("failed_logins_7d", "numeric", description="failed logins in 7 days"),
        Feature("merchant_category", "categorical", MERCHANT_CATEGORIES),
        Feature("channel", "categorical", CHANNELS),
        Feature("card_present", "categorical", ("no", "yes")),
    )
)


@dataclass(frozen=True)
class Drift:
    """How far the world has moved from day 0. Strengths are 0 (none) to about 1 (strong)."""

    covariate: float = 0.0
    concept: float = 0.0
    mode: Literal["gradual", "sudden"] = "gradual"
    start_day: int = 0
    ramp_days: int = 30

    def strength(self, day: float) -> tuple[float, float]:
        """(covariate, concept) strength in force on ``day``."""
        if day < self.start_day:
            return 0.0, 0.0
        if self.mode == "sudden":
            ramp = 1.0
        else:
            ramp = min(1.0, (day - self.start_day) / max(self.ramp_days, 1))
        return self.covariate * ramp, self.concept * ramp

    @classmethod
    def parse(cls, text: str) -> Drift:
        """Parse ``covariate=0.8,concept=0.5,mode=sudden,start_day=10`` (CLI form)."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            if not sep:
                raise ValueError(f"drift option {part!r} is not key=value")
            key = key.strip()
            if key in ("covariate", "concept"):
                values[key] = float(raw)
            elif key in ("start_day", "ramp_days"):
                values[key] = int(raw)
            elif key == "mode":
                if raw not in ("gradual", "sudden"):
                    raise ValueError(f"drift mode must be gradual or sudden, got {raw!r}")
                values[key] = raw
            else:
                raise ValueError(
                    f"unknown drift option {key!r} "
                    "(known: covariate, concept, mode, start_day, ramp_days)"
                )
        return cls(**values)


#: How sharply the hidden rule separates fraud from the rest (higher: easier to learn).
SHARPNESS = 1.8


@dataclass(frozen=True)
class _Rule:
    """Coefficients of the hidden fraud rule (log-odds)."""

    intercept: float = -9.5
    log_ratio: float = 1.3
    night: float = 1.0
    distance: float = 0.55
    merchant_risk: float = 2.2
    device_trust: float = -1.8
    failed_logins: float = 0.45
    new_account: float = 0.6
    online: float = 0.7
    card_present: float = -0.6
    spend_untrusted: float = 4.0
    night_online: float = 3.5
    category: tuple[float, ...] = field(default=(-0.8, -0.4, -0.6, 0.6, 1.0, 0.8, 1.1, 0.5))

    def drifted(self, c: float) -> _Rule:
        """The rule after concept drift of strength c: fraud moves to new patterns."""
        target = _Rule(
            intercept=-7.4,
            log_ratio=0.3,
            night=-0.2,
            distance=0.1,
            merchant_risk=0.6,
            device_trust=-3.2,
            failed_logins=1.2,
            new_account=1.6,
            online=1.4,
            card_present=0.2,
            spend_untrusted=0.3,
            night_online=2.5,
            category=(0.6, 1.1, -0.2, -0.5, -0.4, 0.9, -0.6, 1.2),
        )
        mix = {
            name: (1 - c) * getattr(self, name) + c * getattr(target, name)
            for name in self.__dataclass_fields__
            if name != "category"
        }
        cat = tuple(
            (1 - c) * a + c * b for a, b in zip(self.category, target.category, strict=True)
        )
        return _Rule(**mix, category=cat)


def generate(n: int, *, seed: int = 0, day: float = 0, drift: Drift | None = None) -> pd.DataFrame:
    """``n`` labelled transactions of ``day``; the same arguments give the same rows."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    cov, concept = (drift or Drift()).strength(day)
    rng = np.random.default_rng([seed, round(day * 1000)])

    cat_p = np.array([0.26, 0.14, 0.16, 0.06, 0.08, 0.18, 0.03, 0.09])
    shifted = np.array([0.12, 0.08, 0.10, 0.12, 0.20, 0.28, 0.05, 0.05])
    cat_p = (1 - cov) * cat_p + cov * shifted if cov <= 1 else shifted
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=cat_p / cat_p.sum())

    online_share = min(0.9, 0.35 + 0.3 * cov)
    channel = np.where(
        category == MERCHANT_CATEGORIES.index("atm_cash"),
        2,
        (rng.random(n) < online_share).astype(np.int64),
    )
    card_present = np.where(channel == 1, 0, (rng.random(n) < 0.92).astype(np.int64))

    customer_age = np.clip(rng.normal(44 - 6 * cov, 14, n), 18, 95).round()
    account_age = np.clip(rng.exponential(900 * (1 - 0.4 * min(cov, 1)), n), 0, 9000).round()
    avg_amount = np.exp(rng.normal(3.6 + 0.7 * cov, 0.6, n))
    ratio = np.exp(rng.normal(0.0 + 0.1 * cov, 0.55, n))
    amount = np.round(avg_amount * ratio, 2)
    hour = np.floor((rng.normal(14 + 2 * cov, 5, n)) % 24)
    distance = np.round(rng.lognormal(1.6 + 0.5 * cov, 1.2, n), 1)
    txn_count = rng.poisson(2.5 + 1.5 * cov, n).astype(np.float64)
    merchant_risk = np.clip(rng.beta(2, 8, n) + 0.1 * cov * rng.random(n), 0, 1).round(3)
    device_trust = np.clip(rng.beta(6 - 2 * min(cov, 1), 2, n), 0, 1).round(3)
    failed_logins = rng.poisson(0.3 + 0.2 * cov, n).astype(np.float64)

    rule = _Rule().drifted(concept)
    logit = rule.intercept + SHARPNESS * (
        rule.log_ratio * np.log(np.clip(ratio, 0.05, 50))
        + rule.night * (hour < 6)
        + rule.distance * np.log1p(distance / 20)
        + rule.merchant_risk * merchant_risk * 3
        + rule.device_trust * device_trust
        + rule.failed_logins * failed_logins
        + rule.new_account * (account_age < 60)
        + rule.online * (channel == 1)
        + rule.card_present * card_present
        + np.asarray(rule.category)[category]
        + 0.25 * np.log1p(txn_count)
        + rng.normal(0, 0.3, n)
        # Interactions a linear model cannot express: big spends on untrusted devices, and
        # online shopping at night, are far riskier than either signal alone.
        + rule.spend_untrusted * ((ratio > 2.5) & (device_trust < 0.6))
        + rule.night_online * ((hour < 6) & (channel == 1))
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    return pd.DataFrame(
        {
            "amount": amount,
            "hour": hour,
            "customer_age": customer_age,
            "account_age_days": account_age,
            "distance_km": distance,
            "txn_count_24h": txn_count,
            "avg_amount_30d": np.round(avg_amount, 2),
            "amount_ratio": np.round(amount / avg_amount, 4),
            "merchant_risk": merchant_risk,
            "device_trust": device_trust,
            "failed_logins_7d": failed_logins,
            "merchant_category": category.astype(np.int64),
            "channel": channel.astype(np.int64),
            "card_present": card_present.astype(np.int64),
            LABEL: label,
        }
    )


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the column."""


def table_format(path: Path) -> Literal["csv", "parquet"]:
    """The format of a data file, by its suffix; DataError for any other suffix."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def load_table(path: str | Path, schema: Schema = FRAUD_SCHEMA) -> pd.DataFrame:
    """Read a user's CSV or Parquet file and check it against ``schema``.

    Categorical columns may hold category names or their integer codes. Returns the columns
    of the schema (features, then label when present) as numbers the model can take.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt = table_format(path)
    try:
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None
    if df.empty:
        raise DataError(f"{path}: file has no rows")

    out = feature_frame(df, schema, source=path)
    if schema.label in df.columns:
        out[schema.label] = _label(path, df[schema.label], schema.label)
    return out


def check_columns(columns: Iterable[object], schema: Schema, *, source: str | Path) -> None:
    """DataError naming the first feature of ``schema`` that ``columns`` lack."""
    present = set(columns)
    for name in schema.names:
        if name not in present:
            raise DataError(f"{source}: missing column {name!r}")


def feature_frame(
    df: pd.DataFrame, schema: Schema, *, source: str | Path, first_row: int = 0
) -> pd.DataFrame:
    """The features of ``df`` as numbers the model takes (categories as their codes), checked.

    ``first_row`` is the position of ``df``'s first row in its file, so an error in one chunk
    of a streamed file names the row of the file.
    """
    return pd.DataFrame(feature_columns(df, schema, source=source, first_row=first_row))


def feature_columns(
    df: pd.DataFrame, schema: Schema, *, source: str | Path, first_row: int = 0
) -> dict[str, pd.Series]:
    """``feature_frame`` as separate columns, in schema order (no frame to assemble)."""
    check_columns(df.columns, schema, source=source)
    return {f.name: _column(source, df[f.name], f, first_row=first_row) for f in schema.features}


def _column(source: str | Path, col: pd.Series, feat: Feature, *, first_row: int) -> pd.Series:
    if feat.kind == "numeric":
        if pd.api.types.is_numeric_dtype(col):  # numbers already: only gaps to look for
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            converted = pd.to_numeric(col, errors="coerce")
            bad = converted.isna() & col.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{source}: column {feat.name!r} must be numeric; "
                    f"row {first_row + row} has {_scalar(col.iloc[row])!r}"
                )
            values = converted.to_numpy(dtype=np.float64, na_value=np.nan)
        gaps = np.isnan(values)
        if gaps.any():
            row = int(np.flatnonzero(gaps)[0])
            raise DataError(
                f"{source}: column {feat.name!r} has a missing value at row {first_row + row}"
            )
        return pd.Series(values, index=col.index)
    n = len(feat.categories)
    if col.dtype.kind in "iu":  # integer codes, the common case: range check only
        codes = col.to_numpy()
        ok = (codes >= 0) & (codes < n)
    elif pd.api.types.is_numeric_dtype(col):
        # Integer codes (whole numbers 0..n-1, as ints or floats); NaN fails every comparison.
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = (values >= 0) & (values < n) & (values == np.floor(values))
        codes = np.where(ok, values, 0).astype(np.int64)
    else:
        # Names or codes in an object column; a code matches its int and float forms, and its
        # text: a CSV column mixing names and codes is read as text throughout.
        lookup: dict[object, int] = {str(i): i for i in range(n)}
        lookup.update({i: i for i in range(n)})
        lookup.update({name: i for i, name in enumerate(feat.categories)})
        mapped = col.map(lambda raw: lookup.get(raw, -1) if _hashable(raw) else -1)
        codes = mapped.to_numpy(dtype=np.int64)
        ok = codes >= 0
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"{source}: column {feat.name!r} row {first_row + row} has "
            f"{_scalar(col.iloc[row])!r}, expected one of {list(feat.categories)}"
        )
    return pd.Series(codes, dtype=np.int64, index=col.index)


def _hashable(value: object) -> bool:
    return isinstance(value, str | int | float | np.integer | np.floating)


def _scalar(value: object) -> object:
    """A numpy scalar as the Python value it holds, so error messages show ``1.5``."""
    return value.item() if isinstance(value, np.generic) else value


def _label(path: Path, col: pd.Series, name: str) -> pd.Series:
    converted = pd.to_numeric(col, errors="coerce")
    if converted.isna().any() or not converted.isin([0, 1]).all():
        raise DataError(f"{path}: label column {name!r} must hold only 0 and 1")
    return converted.astype(np.int64)


def features_matrix(df: pd.DataFrame, schema: Schema = FRAUD_SCHEMA) -> np.ndarray:
    """The model's input: float32 [N, F] in schema order (categories as their codes)."""
    matrix: np.ndarray = df[schema.names].to_numpy(dtype=np.float32)
    return matrix


def fingerprint(df: pd.DataFrame) -> str:
    """Content hash of a table: same rows and columns, same fingerprint."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def split(
    df: pd.DataFrame, *, seed: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> tuple[pd.DataFrame, ...]:
    """Deterministic shuffled split into train / validation / test."""
    order = np.random.default_rng(seed).permutation(len(df))
    bounds = np.cumsum([0, *(round(f * len(df)) for f in fractions[:-1]), len(df)])
    bounds[-1] = len(df)
    return tuple(df.iloc[order[a:b]].reset_index(drop=True) for a, b in itertools.pairwise(bounds))
