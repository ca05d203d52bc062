"""Batch scoring: a CSV or Parquet file in, the same rows plus the model's outputs out.

Any model served by the serving SDK scores here through its retraining plugin
(workflows/plugins.py; named in the version's metadata by the retrain pipeline, or given):
its ``inputs_of`` turns a table's rows into the declared inputs, or a ``.npz`` file holds
them by name (images, sequences: anything a table cannot), and each declared output comes
back as a column (``probabilities[0]`` ... for a wider one) or, into a ``.npz``, as an array.
The built-in fraud model has the fast path below, tuned for its table.

The plugin path streams a table as the fraud path does (one thread, no overlap of stages);
an .npz is read and written whole.

Why the fraud path is built this way:
- Streamed: pyarrow reads Parquet row groups or CSV blocks and the rows are scored in chunks
  of ``chunk_rows``, so a file larger than memory scores in constant memory.
- Batch equals online: rows are checked by training/data.py (the same checks as training data)
  and scored by training/model.py ``predict_proba``, the function the model server calls, so
  a row scores the same here as over the v2 protocol.
- Fan-out: ``chunk_index``/``chunk_count`` select a contiguous share of the rows, so each pod
  of the Argo batch-predict Workflow writes its own part (``part_path``) and ``merge_parts``
  joins them in order.
- All or nothing: output goes to a temporary file in the target directory, renamed into place
  when complete; a failed run leaves no partial file behind.
- Fast (target: at least half the rows/s of a bare forward loop over the same rows, so the
  file handling costs no more than the model; bench/batch_predict.py measures it): reading
  and checking, the forward pass, and writing run as three overlapping stages; the features
  reach torch as a C-ordered float32 matrix, as from the v2 decoder; Parquet output is
  gathered into large row groups, dictionary-encoded only where values repeat.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from training.data import (
    DataError,
    Schema,
    check_columns,
    feature_columns,
    feature_frame,
    table_format,
)

if TYPE_CHECKING:
    from training.store import LoadedModel
    from workflows.plugins import Plugin
    from workflows.staging import Version

FRAUD_PLUGIN = "workflows.fraud:PIPELINE"
PROBABILITY = "probability"
MODEL_VERSION = "model_version"
OUTPUT_COLUMNS = (PROBABILITY, MODEL_VERSION)
DEFAULT_CHUNK_ROWS = 65_536
#: Parquet row groups of about this many bytes (in memory): a handful per million rows.
ROW_GROUP_BYTES = 32 << 20

Format = Literal["csv", "parquet"]
#: Arrays by name, rows on axis 0 (numpy's .npz, read without pickle).
NPZ = ".npz"
#: Called after each scored chunk with (rows in that chunk, rows in this run's share); once
#: with (0, total) before the first chunk.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchResult:
    rows: int
    seconds: float
    rows_per_s: float
    output: Path
    model: str = ""

    @classmethod
    def since(cls, started: float, *, rows: int, output: Path, model: str = "") -> BatchResult:
        """The result of a run that began at ``started`` (``time.perf_counter()``)."""
        seconds = time.perf_counter() - started
        rate = round(rows / seconds, 1) if seconds > 0 else 0.0
        return cls(
            rows=rows, seconds=round(seconds, 3), rows_per_s=rate, output=output, model=model
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output)}

    def summary(self) -> str:
        model = f" with {self.model}" if self.model else ""
        return (
            f"scored {self.rows:,} rows{model} in {self.seconds:.2f}s "
            f"({self.rows_per_s:,.0f} rows/s) -> {self.output}"
        )


def part_path(output: Path, *, index: int, count: int) -> Path:
    """Where fan-out pod ``index`` of ``count`` writes: ``out.parquet`` ->
    ``out.part-00003-of-00008.parquet`` (next to the merged output, same format)."""
    return output.with_name(f"{output.stem}.part-{index:05d}-of-{count:05d}{output.suffix}")


def part_paths(output: Path, count: int) -> list[Path]:
    return [part_path(output, index=i, count=count) for i in range(count)]


def share(rows: int, *, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of pod ``index`` of ``count``: contiguous, sizes differing by at most
    one, in order, covering every row exactly once."""
    return rows * index // count, rows * (index + 1) // count


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """An input file: its format, rows and columns, and how to stream a range of its rows."""

    path: Path
    format: Format
    rows: int
    columns: tuple[str, ...]

    @classmethod
    def open(cls, path: Path) -> _Source:
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not a data file")
        fmt = table_format(path)
        try:
            if fmt == "parquet":
                meta = pq.ParquetFile(path).metadata
                rows, columns = meta.num_rows, tuple(meta.schema.to_arrow_schema().names)
            else:
                rows, columns = _count_csv(path)
        except DataError:
            raise
        except (pa.ArrowException, OSError) as exc:
            if "Empty CSV file" in str(exc):
                raise DataError(f"{path}: file is empty") from None
            raise DataError(f"{path}: cannot read file: {exc}") from None
        if rows == 0:
            raise DataError(f"{path}: file has no rows")
        return cls(path, fmt, rows, columns)

    def batches(
        self, start: int, stop: int, *, schema: Schema, batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """Rows [start, stop) in record batches, reading nothing past ``stop``. CSV columns of
        numeric features are read as float64 whatever their text looks like in the first
        block (a column of whole numbers may hold a fraction further down)."""
        try:
            if self.format == "parquet":
                yield from self._parquet(start, stop, batch_rows)
            else:
                yield from _window(self._csv_reader(skip=start, schema=schema), 0, stop - start)
        except (pa.ArrowException, OSError) as exc:
            if self.format == "csv":
                raise _csv_error(self, exc, start=start, schema=schema) from None
            raise DataError(f"{self.path}: cannot read file: {exc}") from None

    def arrow_schema(self, schema: Schema) -> pa.Schema:
        """The schema rows arrive in (CSV types are inferred from the first block)."""
        try:
            if self.format == "parquet":
                return pq.ParquetFile(self.path).schema_arrow
            return self._csv_reader(skip=0, schema=schema).schema
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: cannot read file: {exc}") from None

    def _parquet(self, start: int, stop: int, batch_rows: int) -> Iterator[pa.RecordBatch]:
        pf = pq.ParquetFile(self.path)
        groups, first, offset = [], None, 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if offset < stop and offset + n > start:
                groups.append(i)
                first = offset if first is None else first
            offset += n
        if not groups or first is None:
            return
        batches = pf.iter_batches(batch_size=batch_rows, row_groups=groups)
        yield from _window(batches, start - first, stop - start)

    def _csv_reader(self, *, skip: int, schema: Schema) -> pa_csv.CSVStreamingReader:
        # Columns passed through are read as text: a guess from the first block would drop an
        # id's leading zeros, reject a later value, or differ between fan-out pods.
        types: dict[str, pa.DataType] = {name: pa.string() for name in self.columns}
        types.update({f.name: pa.float64() for f in schema.features if f.kind == "numeric"})
        for f in schema.features:
            if f.kind != "numeric":
                types.pop(f.name, None)
        return _open_csv(self.path, skip=skip, convert=pa_csv.ConvertOptions(column_types=types))


def _open_csv(
    path: Path, *, skip: int = 0, convert: pa_csv.ConvertOptions | None = None
) -> pa_csv.CSVStreamingReader:
    """A streaming CSV reader starting ``skip`` rows after the header. Quoted values may span
    lines (a free-text column passed through), so rows are counted as CSV rows, not lines."""
    return pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(skip_rows_after_names=skip, block_size=4 << 20),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=convert,
    )


def _count_csv(path: Path) -> tuple[int, tuple[str, ...]]:
    """(rows, column names) of a CSV file, parsing it whole (quoted newlines count right) but
    converting only its first column."""
    with open(path, "rb") as f:
        if not f.read(1):
            raise DataError(f"{path}: file is empty")
    names = _open_csv(path).schema.names
    reader = _open_csv(
        path,
        convert=pa_csv.ConvertOptions(
            include_columns=names[:1], column_types={names[0]: pa.string()}
        ),
    )
    return sum(batch.num_rows for batch in reader), tuple(names)


def _csv_error(source: _Source, exc: Exception, *, start: int, schema: Schema) -> DataError:
    """The error for a CSV value arrow could not convert ("In CSV column #3: ... invalid value
    'x'", no row). For a numeric feature, the column is read again as text and checked like
    training data, which names the row; otherwise the column gets its name."""
    message = str(exc).strip()
    m = re.match(r"In CSV column #(\d+): (.*)", message, re.DOTALL)
    if not m or int(m.group(1)) >= len(source.columns):
        return DataError(f"{source.path}: cannot read file: {message}")
    name = source.columns[int(m.group(1))]
    feature = next((f for f in schema.features if f.name == name), None)
    if feature is not None and feature.kind == "numeric":
        reader = _open_csv(
            source.path,
            skip=start,
            convert=pa_csv.ConvertOptions(include_columns=[name], column_types={name: pa.string()}),
        )
        row = start
        one = Schema(features=(feature,))
        try:
            for batch in reader:
                feature_frame(batch.to_pandas(), one, source=source.path, first_row=row)
                row += batch.num_rows
        except DataError as found:
            return found
    return DataError(f"{source.path}: cannot read file: column {name!r}: {m.group(2)}")


def _window(batches: Iterable[pa.RecordBatch], skip: int, take: int) -> Iterator[pa.RecordBatch]:
    """The ``take`` rows after the first ``skip`` rows of a stream of batches."""
    for batch in batches:
        if take <= 0:
            return
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        part = batch.slice(skip, take)
        skip = 0
        take -= part.num_rows
        yield part


def _rechunk(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


# --- writing --------------------------------------------------------------------------------


class _Writer:
    """Streams tables to a temporary file next to ``output``; ``commit`` renames it into place,
    leaving the block without committing removes it. With a ``pool``, each write runs there
    while the caller prepares the next table (one write in flight at a time).

    Parquet row groups are gathered to about ``ROW_GROUP_BYTES`` rather than written per
    chunk: readers prefer large row groups, and the writer spends a third less time on
    fewer (each restarts its dictionaries and statistics)."""

    def __init__(
        self,
        output: Path,
        schema: pa.Schema,
        *,
        pool: ThreadPoolExecutor | None = None,
        sample: pa.Table | None = None,
    ) -> None:
        self.output = output
        self.format: Format = table_format(output)
        self.tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        self._writer: pq.ParquetWriter | pa_csv.CSVWriter | None = None
        self._schema = schema
        self._sample = sample
        self._pool = pool
        self._pending: Future[None] | None = None
        self._group: list[pa.Table] = []
        self._group_bytes = 0

    def __enter__(self) -> _Writer:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            dictionary = _dictionary_columns(self._sample) if self._sample is not None else True
            self._writer = pq.ParquetWriter(self.tmp, self._schema, use_dictionary=dictionary)
        else:
            self._writer = pa_csv.CSVWriter(self.tmp, self._schema)
        return self

    def write(self, table: pa.Table) -> None:
        if self.format == "parquet":
            self._group.append(table)
            self._group_bytes += table.nbytes
            if self._group_bytes < ROW_GROUP_BYTES:
                return
            table = self._take_group()
        self._write(table)

    def _take_group(self) -> pa.Table:
        table = pa.concat_tables(self._group)
        self._group, self._group_bytes = [], 0
        return table

    def _write(self, table: pa.Table) -> None:
        writer = self._writer
        assert writer is not None
        self._settle()

        def write() -> None:
            if isinstance(writer, pq.ParquetWriter):  # the whole group as one row group
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
            else:
                writer.write_table(table)

        if self._pool is None:
            write()
        else:
            self._pending = self._pool.submit(write)

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def commit(self) -> None:
        assert self._writer is not None
        if self._group:
            self._write(self._take_group())
        self._settle()
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.output)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._settle()  # never close the file under a write still running
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self.tmp.unlink(missing_ok=True)


def _dictionary_columns(sample: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding, judged on the first chunk: those with few distinct
    values (hours, ages, codes, the model version). On near-unique ones (amounts, scores)
    the writer would build a dictionary until its page limit and fall back to plain anyway:
    a fifth of the write's time for nothing."""
    limit = sample.num_rows // 2
    return [
        name
        for name, column in zip(sample.column_names, sample.columns, strict=True)
        if pc.count_distinct(column).as_py() <= limit
    ]


def _file_format(path: Path) -> Literal["csv", "parquet", "npz"]:
    if path.suffix.lower() == NPZ:
        return "npz"
    try:
        return table_format(path)
    except DataError:
        raise DataError(
            f"{path}: unsupported file type {path.suffix.lower()!r} (use .csv, .parquet or .npz)"
        ) from None


def _check_output(output: Path, *, inputs: Sequence[Path] = ()) -> None:
    _file_format(output)
    if output.is_dir():
        raise DataError(f"{output}: is a directory; name the output file")
    for path in inputs:
        if path.exists() and output.exists() and output.samefile(path):
            raise DataError(f"{output}: the output would overwrite the input")


# --- scoring --------------------------------------------------------------------------------


def load_model(tag: str) -> LoadedModel:
    """The model version ``tag`` (``fraud:v2``, ``fraud:latest``) from the model store."""
    from training import store  # imports bentoml: only when a model is needed

    try:
        return store.load(tag)
    except store.ModelNotFound:
        raise
    except Exception as exc:  # a malformed tag: bentoml raises several kinds
        raise store.ModelNotFound(f"model {tag!r}: {exc}") from None


def batch_predict(
    *,
    model: str,
    input: Path,
    output: Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_index: int | None = None,
    chunk_count: int | None = None,
    progress: Progress | None = None,
    plugin: str | None = None,
) -> BatchResult:
    """Score ``input`` with model version ``model`` into ``output`` (CSV, Parquet or .npz by
    suffix): the input's columns plus the model's outputs (a fraud model's ``probability``,
    float32) and ``model_version``.

    ``plugin``: the model's retraining plugin (default: the one its metadata names; a fraud
    version needs none). With ``chunk_index``/``chunk_count`` only that contiguous share of
    the rows is scored, into ``part_path(output, ...)``. Raises DataError or ModelNotFound
    with a message naming the file, column, row or model at fault; nothing is written then.
    The result's ``seconds`` cover the whole run except loading the model.
    """
    started = time.perf_counter()
    input, output = Path(input), Path(output)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if (chunk_index is None) != (chunk_count is None):
        raise ValueError("chunk_index and chunk_count go together")
    if chunk_count is not None and chunk_index is not None:
        if chunk_count < 1:
            raise ValueError(f"chunk_count must be at least 1, got {chunk_count}")
        if not 0 <= chunk_index < chunk_count:
            raise ValueError(f"chunk_index must be in 0..{chunk_count - 1}, got {chunk_index}")
        output = part_path(output, index=chunk_index, count=chunk_count)
    _check_output(output, inputs=[input])
    # Finding the version and its plugin opens the store (bentoml's imports, about a second):
    # part of loading the model, which the rate leaves out, as it always did.
    finding = time.perf_counter()
    by_plugin = _plugin_of(model, plugin)
    started += time.perf_counter() - finding
    if by_plugin is not None:
        version, chosen = by_plugin
        return _predict_with_plugin(
            version,
            chosen,
            input=input,
            output=output,
            chunk_rows=chunk_rows,
            chunk=None if chunk_count is None else (chunk_index or 0, chunk_count),
            progress=progress,
        )
    source = _Source.open(input)
    from training.model import predict_proba

    loading = time.perf_counter()
    loaded = load_model(model)
    schema = loaded.schema
    # Warm up on one row, as the model server does before its first request (torch's one-time
    # kernel set-up). Loading and warming up are a fixed cost (mostly bentoml's lazy imports),
    # not part of the rate.
    predict_proba(loaded.net, np.zeros((1, len(schema.features)), dtype=np.float32))
    started += time.perf_counter() - loading
    check_columns(source.columns, schema, source=input)
    for name in OUTPUT_COLUMNS:
        if name in source.columns:
            raise DataError(
                f"{input}: has a column {name!r}, which the output adds; rename or drop it"
            )
    start, stop = (0, source.rows)
    if chunk_count is not None and chunk_index is not None:
        start, stop = share(source.rows, index=chunk_index, count=chunk_count)

    version = pa.scalar(loaded.version, pa.string())
    checked = [*schema.names, *OUTPUT_COLUMNS]  # never null in the output
    rows = 0
    if progress:
        progress(0, stop - start)
    # Three stages overlap: a worker thread reads and checks chunk i+1 while this thread runs
    # the model on chunk i and another writes chunk i-1 (arrow and torch release the GIL).
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch") as pool,
        contextlib.ExitStack() as stack,
    ):
        writer: _Writer | None = None
        batches = source.batches(start, stop, schema=schema, batch_rows=chunk_rows)
        chunks = _prepared(_rechunk(batches, chunk_rows), schema, input, start)
        for table, features in _prefetch(pool, chunks):
            scores = predict_proba(loaded.net, features)
            table = table.append_column(PROBABILITY, pa.array(scores, pa.float32()))
            table = table.append_column(MODEL_VERSION, pa.repeat(version, table.num_rows))
            if writer is None:
                out_schema = _not_null(table.schema, checked)
                writer = stack.enter_context(_Writer(output, out_schema, pool=pool, sample=table))
            writer.write(pa.Table.from_arrays(table.columns, schema=out_schema))
            rows += table.num_rows
            if progress:
                progress(table.num_rows, stop - start)
        if writer is None:  # an empty share (more pods than rows): a part with no rows
            empty = _with_outputs(source.arrow_schema(schema).remove_metadata())
            writer = stack.enter_context(_Writer(output, _not_null(empty, checked)))
        writer.commit()
    return BatchResult.since(started, rows=rows, output=output, model=loaded.tag)


def _not_null(schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    """``schema`` with ``names`` declared free of nulls: checked features and the outputs.
    Parquet then stores no definition levels for them (a tenth of the write's time)."""
    fields = [f.with_nullable(False) if f.name in names else f for f in schema]
    return pa.schema(fields)


def _with_outputs(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(PROBABILITY, pa.float32())).append(
        pa.field(MODEL_VERSION, pa.string())
    )


def _prepared(
    tables: Iterable[pa.Table], schema: Schema, source: Path, first_row: int
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """(rows as read, their checked features as a float32 [N, F] matrix) per chunk.

    The matrix is filled column by column in C order, as the server's v2 decoder hands rows
    to the model: the same memory layout takes the same kernels (a column-major matrix is
    also slower in torch), and no DataFrame is assembled just to be flattened again."""
    for table in tables:
        frame = table.select(schema.names).to_pandas()
        columns = feature_columns(frame, schema, source=source, first_row=first_row)
        features = np.empty((table.num_rows, len(columns)), dtype=np.float32)
        for j, column in enumerate(columns.values()):
            features[:, j] = column.to_numpy()
        first_row += table.num_rows
        yield table.replace_schema_metadata(None), features


_END = object()


def _prefetch(pool: ThreadPoolExecutor, items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each one computed on ``pool`` while the caller works on the one before."""
    ahead = pool.submit(next, items, _END)
    while (item := ahead.result()) is not _END:
        ahead = pool.submit(next, items, _END)
        yield item


# --- any model, through its plugin ----------------------------------------------------------


def _plugin_of(model: str, given: str | None) -> tuple[Version, Plugin] | None:
    """The version and the plugin to score it with; None for a fraud version (its fast
    path), or a model the store lacks (the fast path names it)."""
    from workflows import plugins, staging  # imports bentoml: only when a model is needed

    try:
        version = staging.stored(model)
    except LookupError:
        if given is None:
            return None
        raise
    named = given or version.metadata.get("plugin")
    if named == FRAUD_PLUGIN or (named is None and "feature_schema" in version.metadata):
        return None
    if named is None:
        raise DataError(
            f"model {version.tag} names no retraining plugin in its metadata (it was not "
            "made by `turnout pipeline run retrain`): give the plugin that knows its inputs, "
            "e.g. --plugin examples.digits.pipeline:PIPELINE"
        )
    return version, plugins.load(str(named))


def _predict_with_plugin(
    version: Version,
    plugin: Plugin,
    *,
    input: Path,
    output: Path,
    chunk_rows: int,
    chunk: tuple[int, int] | None,
    progress: Progress | None,
) -> BatchResult:
    """Score with the plugin's ``predict``, chunk by chunk, in order: a table's chunks are
    written as they come; an .npz is written whole at the end (numpy writes it so)."""
    model = plugin.load(version.path)
    started = time.perf_counter()  # loading the model is a fixed cost, not part of the rate
    added = {*_columns(plugin), MODEL_VERSION}
    start, stop, chunks, passed = _plugin_chunks(
        input, chunk_rows=chunk_rows, chunk=chunk, added=added
    )
    if progress:
        progress(0, stop - start)
    parts: list[dict[str, np.ndarray]] = []
    rows = 0
    with contextlib.ExitStack() as stack:
        writer: _Writer | None = None
        for table, split in chunks:
            outputs = plugin.predict(model, plugin.inputs_of(split))
            n = len(next(iter(outputs.values())))
            if _file_format(output) == "npz":
                parts.append(outputs)
            else:
                scored = _with_columns(table, plugin, outputs, version=version.version)
                if writer is None:
                    writer = stack.enter_context(_Writer(output, scored.schema))
                writer.write(scored)
            rows += n
            if progress:
                progress(n, stop - start)
        if _file_format(output) == "npz":
            _write_npz(output, _stacked(plugin, parts, version=version.version))
        else:
            if writer is None:  # an empty share (more pods than rows): a part with no rows
                fields = [pa.field(k, pa.from_numpy_dtype(v)) for k, v in _dtypes(plugin)]
                schema = pa.schema([*passed, *fields, pa.field(MODEL_VERSION, pa.string())])
                writer = stack.enter_context(_Writer(output, schema))
            writer.commit()
    return BatchResult.since(started, rows=rows, output=output, model=version.tag)


def _with_columns(
    table: pa.Table | None, plugin: Plugin, outputs: dict[str, np.ndarray], *, version: str
) -> pa.Table:
    """The rows as read (none from an .npz) with the output columns and the version."""
    n = len(next(iter(outputs.values())))
    added = {k: pa.array(v) for k, v in _output_columns(plugin, outputs).items()}
    added[MODEL_VERSION] = pa.array([version] * n, pa.string())
    if table is None:
        return pa.table(added)
    for name, column in added.items():
        table = table.append_column(name, column)
    return table.replace_schema_metadata(None)


def _stacked(
    plugin: Plugin, parts: list[dict[str, np.ndarray]], *, version: str
) -> dict[str, np.ndarray]:
    arrays = {
        t.name: np.concatenate([p[t.name] for p in parts])
        if parts
        else np.zeros((0, *t.shape[1:]), dtype=t.dtype)
        for t in plugin.outputs
    }
    return {**arrays, MODEL_VERSION: np.array(version)}


def _plugin_chunks(
    input: Path, *, chunk_rows: int, chunk: tuple[int, int] | None, added: set[str]
) -> tuple[int, int, Iterator[tuple[pa.Table | None, Any]], list[pa.Field]]:
    """(first row, end row, chunks, columns passed through): arrays of an .npz, or a table's
    rows (with the table, to pass its columns through) as a DataFrame for the plugin's
    ``inputs_of``."""
    if _file_format(input) == "npz":
        arrays = _read_npz(input)
        total = len(next(iter(arrays.values())))
        start, stop = share(total, index=chunk[0], count=chunk[1]) if chunk else (0, total)
        return (
            start,
            stop,
            (
                (None, {k: v[a : min(a + chunk_rows, stop)] for k, v in arrays.items()})
                for a in range(start, stop, chunk_rows)
            ),
            [],
        )
    source = _Source.open(input)
    clash = added & set(source.columns)
    if clash:
        raise DataError(f"{input}: has columns {sorted(clash)}, which the output adds; rename them")
    start, stop = share(source.rows, index=chunk[0], count=chunk[1]) if chunk else (0, source.rows)
    tables = _rechunk(_rows(source, start, stop), chunk_rows)
    try:
        if source.format == "parquet":
            passed = list(pq.ParquetFile(input).schema_arrow.remove_metadata())
        else:
            passed = list(_open_csv(input).schema)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{input}: cannot read file: {exc}") from None
    return start, stop, ((t, t.to_pandas()) for t in tables), passed


def _rows(source: _Source, start: int, stop: int) -> Iterator[pa.RecordBatch]:
    """Rows [start, stop); a CSV's columns with the types arrow infers from the file's first
    block, so every chunk and every fan-out pod reads the same types (the plugin's
    ``inputs_of`` converts them to the model's)."""
    try:
        if source.format == "parquet":
            yield from source._parquet(start, stop, DEFAULT_CHUNK_ROWS)
        else:
            first = _open_csv(source.path).schema
            types = pa_csv.ConvertOptions(
                column_types=dict(zip(first.names, first.types, strict=True))
            )
            yield from _window(_open_csv(source.path, skip=start, convert=types), 0, stop - start)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{source.path}: cannot read file: {exc}") from None


def _columns(plugin: Plugin) -> list[str]:
    """The output columns: a declared output of one value per row is a column of its name, a
    wider one a column per value, ``name[0]``, ``name[1]``, ... in C order."""
    return [name for name, _ in _dtypes(plugin)]


def _dtypes(plugin: Plugin) -> list[tuple[str, np.dtype[Any]]]:
    """Each output column's name and type (the declared output's)."""
    return [
        (name, t.dtype)
        for t in plugin.outputs
        for name in ([t.name] if not t.shape[1:] else _wide(t.name, math.prod(t.shape[1:])))
    ]


def _wide(name: str, width: int) -> list[str]:
    return [f"{name}[{j}]" for j in range(width)]


def _output_columns(plugin: Plugin, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for t in plugin.outputs:
        values = outputs[t.name].astype(t.dtype, copy=False)
        if not t.shape[1:]:
            columns[t.name] = values.reshape(len(values))
            continue
        flat = values.reshape(len(values), -1)
        columns.update(zip(_wide(t.name, flat.shape[1]), flat.T, strict=True))
    return columns


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read arrays: {exc}") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Inputs by name: numeric arrays of one length."""
    from workflows.plugins import split_problem

    found = _load_npz(path)
    problem = split_problem(found)
    if problem:
        raise DataError(f"{path}: {problem}")
    return found


def _write_npz(output: Path, arrays: dict[str, np.ndarray]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.tmp{NPZ}")
    try:
        np.savez(tmp, allow_pickle=False, **arrays)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


# --- merging the fan-out's parts ------------------------------------------------------------


def merge_parts(parts: Sequence[Path], output: Path) -> BatchResult:
    """Join the fan-out's parts, in the order given, into ``output`` (same format as the parts).

    Parquet parts are streamed row group by row group and must share one schema; CSV parts are
    joined byte for byte (each part's header must match the first one's and is written once).
    """
    started = time.perf_counter()
    output = Path(output)
    if not parts:
        raise DataError(f"{output}: no parts to merge")
    fmt = _file_format(output)
    _check_output(output, inputs=parts)
    for part in parts:
        if not part.exists():
            raise DataError(f"{part}: part not found (did every chunk of the fan-out finish?)")
        if _file_format(part) != fmt:
            raise DataError(f"{part}: a {_file_format(part)} part cannot merge into {output}")
    merge = {"parquet": _merge_parquet, "csv": _merge_csv, "npz": _merge_npz}[fmt]
    rows = merge(parts, output)
    return BatchResult.since(started, rows=rows, output=output)


def _merge_parquet(parts: Sequence[Path], output: Path) -> int:
    try:
        files = [pq.ParquetFile(p) for p in parts]
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read a part: {exc}") from None
    names = files[0].schema_arrow.names
    for part, pf in zip(parts, files, strict=True):
        if pf.schema_arrow.names != names:
            raise DataError(f"{part}: its columns differ from {parts[0]}'s; cannot merge")
    try:
        # Parts scored from CSV infer their types per share (whole numbers in one, fractions in
        # another): widen to one schema.
        schema = pa.unify_schemas([pf.schema_arrow for pf in files], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{output}: the parts' column types do not agree: {exc}") from None
    rows = 0
    with _Writer(output, schema) as writer:
        for pf in files:
            for i in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(i).cast(schema)
                writer.write(table)
                rows += table.num_rows
        writer.commit()
    return rows


def _merge_csv(parts: Sequence[Path], output: Path) -> int:
    header: bytes | None = None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    first = f.readline()
                    if header is None:
                        header = first
                        out.write(first)
                    elif first != header:
                        raise DataError(
                            f"{part}: its header differs from {parts[0]}'s; cannot merge"
                        )
                    shutil.copyfileobj(f, out, 16 << 20)
                    if f.tell() > len(first):
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            out.write(b"\n")
        rows, _ = _count_csv(tmp) if header else (0, ())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _merge_npz(parts: Sequence[Path], output: Path) -> int:
    loaded = [_load_npz(p) for p in parts]
    names = sorted(loaded[0])
    for part, arrays in zip(parts, loaded, strict=True):
        if sorted(arrays) != names:
            raise DataError(f"{part}: its arrays differ from {parts[0]}'s; cannot merge")
    merged = {
        k: loaded[0][k] if k == MODEL_VERSION else np.concatenate([a[k] for a in loaded])
        for k in names
    }
    _write_npz(output, merged)
    return max((len(v) for k, v in merged.items() if k != MODEL_VERSION), default=0)
