"""`turnout batch-predict` and `turnout batch-merge`: the command line of workflows/batch.py.

A module of its own so that registering the commands in turnout/cli/main.py costs `turnout` no
start-up time: pandas, pyarrow and torch are imported when a command runs, not when the CLI
loads. `python -m workflows.batch_cli` runs batch-predict on its own.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

#: workflows.batch.DEFAULT_CHUNK_ROWS, repeated so that --help imports nothing heavy.
DEFAULT_CHUNK_ROWS = 65_536


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap; False where that cannot be done (not glibc).

    A forward pass over 65,536 rows allocates ~16 MB activations and frees them. glibc hands
    blocks that large back to the OS (mmap threshold, heap trim) once other allocations
    churn the heap, as reading and writing do here, so every chunk page-faults its
    activations in afresh: the forward pass took ~1.5x as long as in a bare loop. A process
    setting, so the command makes it, not batch_predict.
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(
            libc.mallopt(m_trim_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        return False


class _Bar:
    """click's progress bar on stderr, sized once batch_predict knows the row count."""

    def __init__(self, stack: contextlib.ExitStack, label: str) -> None:
        self._stack = stack
        self._label = label
        self._bar: Any = None

    def __call__(self, rows: int, total: int) -> None:
        if self._bar is None:
            bar = click.progressbar(length=total, label=self._label, file=sys.stderr, show_pos=True)
            self._bar = self._stack.enter_context(bar)
        self._bar.update(rows)


@click.command("batch-predict")
@click.argument("model")
@click.argument("input", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="rows scored per forward pass (memory grows with it)",
)
@click.option(
    "--chunk-index",
    type=click.IntRange(min=0),
    help="fan-out: score only share I of --chunk-count, into NAME.part-0000I-of-0000N.SUFFIX",
)
@click.option(
    "--chunk-count", type=click.IntRange(min=1), help="fan-out: the number of shares (pods)"
)
@click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch intra-op threads; reading and writing run on threads of their own beside them",
)
@click.option(
    "--plugin",
    metavar="MODULE:ATTR",
    help="the model's retraining plugin, when its metadata names none (fraud needs none)",
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
def batch_predict_command(
    model: str,
    input: Path,
    output: Path,
    chunk_rows: int,
    chunk_index: int | None,
    chunk_count: int | None,
    torch_threads: int,
    plugin: str | None,
    as_json: bool,
) -> None:
    """Score a CSV, Parquet or .npz file with MODEL (e.g. fraud:v2, digits:latest) into OUTPUT.

    OUTPUT (.csv, .parquet or .npz) holds INPUT's columns plus the model's outputs (fraud:
    `probability`; a wider output a column per value, `probabilities[0]` ...) and
    `model_version`; an .npz holds the outputs by name. Any model served by the serving SDK
    scores through its retraining plugin (workflows/PLUGINS.md).
    """
    if (chunk_index is None) != (chunk_count is None):
        raise click.UsageError("--chunk-index and --chunk-count go together")
    if chunk_index is not None and chunk_count is not None and chunk_index >= chunk_count:
        raise click.BadParameter(
            f"{chunk_index} is not below --chunk-count {chunk_count}", param_hint="--chunk-index"
        )
    import torch

    from training.data import DataError
    from training.store import ModelNotFound  # imports bentoml, before the clock starts
    from workflows.batch import batch_predict

    # One thread by default, like the model server: this MLP's forward pass gains little
    # from more, and with the read and write threads busy beside it, extra torch threads
    # mostly spin. Scale out with the fan-out (--chunk-count) instead.
    torch.set_num_threads(torch_threads)
    keep_freed_memory()
    with contextlib.ExitStack() as stack:
        try:
            result = batch_predict(
                model=model,
                input=input,
                output=output,
                chunk_rows=chunk_rows,
                chunk_index=chunk_index,
                chunk_count=chunk_count,
                progress=_Bar(stack, f"scoring {input.name}"),
                plugin=plugin,
            )
        except (DataError, ModelNotFound, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.to_dict()) if as_json else result.summary())


@click.command("batch-merge")
@click.argument("output", type=click.Path(path_type=Path))
@click.argument("parts", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--chunk-count",
    type=click.IntRange(min=1),
    help="merge the parts `batch-predict --chunk-count N` wrote for OUTPUT (instead of PARTS)",
)
@click.option("--remove-parts", is_flag=True, help="delete the parts after a successful merge")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
def batch_merge_command(
    output: Path,
    parts: tuple[Path, ...],
    chunk_count: int | None,
    remove_parts: bool,
    as_json: bool,
) -> None:
    """Join the parts of a fanned-out batch-predict into OUTPUT, in order."""
    from training.data import DataError
    from workflows.batch import merge_parts, part_paths

    if bool(parts) == (chunk_count is not None):
        raise click.UsageError("give either PARTS or --chunk-count N")
    paths = list(parts) if parts else part_paths(output, chunk_count or 0)
    try:
        result = merge_parts(paths, output)
    except (DataError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if remove_parts:
        for path in paths:
            path.unlink(missing_ok=True)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "parts": len(paths)}))
    else:
        click.echo(
            f"merged {len(paths)} parts ({result.rows:,} rows) in {result.seconds:.2f}s "
            f"-> {result.output}"
        )


if __name__ == "__main__":
    batch_predict_command()
