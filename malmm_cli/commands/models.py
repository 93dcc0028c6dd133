"""models and cache: the known models, downloads, and the vision feature cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli.commands.options import PlainUsage, QuietOption
from malmm_cli.commands.terminal import EXIT_FAILED, refusals, stdout_console, stopped_by
from malmm_cli.media.names import shown
from malmm_cli.wording import counted

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    pass


models_app = typer.Typer(help="Known models: list them, see which are cached, download them.", no_args_is_help=True)


@models_app.command("list")
def models_list() -> None:
    """The InstructBLIP models malmm knows, their sizes, and which are in the local cache."""
    from rich.table import Table

    from malmm_cli.jobs.hub import FINE_TUNED, cache_dir, list_models

    table = Table(title="Models (Hugging Face hub)", title_justify="left")
    for column in ("name", "hub id", "parameters", "download", "cached", "note"):
        table.add_column(column)
    for row in list_models():
        if row.parameters is None:  # another model in the cache: its size on disk
            table.add_row(row.name, row.repo, "", f"{row.size_bytes / 1e9:.1f} GB", row.cached, row.note)
        else:
            table.add_row(row.name, row.repo, f"{row.parameters / 1e9:.1f} B", f"~{row.size_bytes / 1e9:.0f} GB",
                          row.cached, row.note)  # fmt: skip
    console = stdout_console()
    console.print(table)
    console.print(f"cache: {cache_dir()}  (download: malmm models download NAME)")
    tuned = Table(title="MA-LMM fine-tuned checkpoints (not on the hub: pass the file with --checkpoint)",
                  title_justify="left")  # fmt: skip
    for column in ("dataset", "use with", "frames", "memory bank"):
        tuned.add_column(column)
    for checkpoint in FINE_TUNED:
        tuned.add_row(checkpoint.dataset, f"malmm {checkpoint.command}", str(checkpoint.frames),
                      str(checkpoint.memory_bank_length))  # fmt: skip
    console.print(tuned)
    console.print("base model: instructblip-vicuna-7b; files: saved_model.tar from github.com/boheumd/MA-LMM")


@models_app.command("download", cls=PlainUsage)
def models_download(
    name: Annotated[str, typer.Argument(metavar="NAME", hidden=True, show_default=False)],
    quiet: QuietOption = False,
) -> None:
    """Download a model's config, tokenizers and safetensors weights into the Hugging Face cache.

    NAME is a name from `malmm models list`, or any hub id.
    """
    from malmm_cli.commands.progress import Reporter
    from malmm_cli.jobs.hub import ModelUnavailable, download_model

    reporter = Reporter(quiet=quiet)
    try:
        with refusals(reporter):
            got = download_model(name, reporter.downloading)
    except ModelUnavailable as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_FAILED) from error
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}: run the same command again to resume the download.")
        raise typer.Exit(status) from None
    if got.already_cached:
        reporter.info(f"{got.repo} is already in the cache: {got.folder}")
    else:
        reporter.info(f"{got.repo} is ready: {got.folder}")


cache_app = typer.Typer(help="The vision feature cache that makes a second question about a video fast.",
                        no_args_is_help=True)  # fmt: skip


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is, what it holds, and its size limit."""
    from malmm_cli.reading.feature_cache import FeatureCache

    cache = FeatureCache(on_problem=lambda message: typer.echo(f"warning: {shown(message)}", err=True))
    entries = cache.entries()
    total = sum(entry.size for entry in entries)
    typer.echo(f"location: {shown(cache.folder)}")
    typer.echo(
        f"entries: {counted(len(entries), 'video')}, {total / 1024**3:.2f} GiB of {cache.limit / 1024**3:.0f} GiB"
    )
    partials = cache.partials()
    if partials:
        stale = [p for p in partials if cache.is_stale(p)]
        size = sum(p.size for p in partials) / 1024**3
        typer.echo(
            f"unfinished: {len(partials)} ({size:.2f} GiB): {len(partials) - len(stale)} being written, "
            f"{len(stale)} left by runs that stopped (removed by `malmm cache clear` or the next run)"
        )
    typer.echo("settings: MALMM_CACHE_DIR (location), MALMM_CACHE_SIZE (limit in GB); --no-cache to bypass")


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached video (and what stopped runs left); nothing else in the folder."""
    from malmm_cli.reading.feature_cache import FeatureCache

    cache = FeatureCache(on_problem=lambda message: typer.echo(f"warning: {shown(message)}", err=True))
    freed = cache.clear()
    typer.echo(f"removed {freed / 1024**3:.2f} GiB from {shown(cache.folder)}")
