from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, output_options


@click.command("buckets")
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.option("--resolution", type=int, default=None,
              help="Training resolution (default 512, or dataset.toml's).")
@click.option("--min-bucket-reso", type=int, default=None, help="Smallest bucket side (default 256).")
@click.option("--max-bucket-reso", type=int, default=None, help="Largest bucket side (default 1024).")
@click.option("--bucket-reso-steps", type=int, default=None, help="Bucket side step (default 64).")
@click.option("--bucket-no-upscale", is_flag=True, default=None, help="As sd-scripts' bucket_no_upscale.")
@click.option("--batch-size", type=int, default=None, help="Batch size: buckets smaller than it are sparse.")
@click.option("--fix", is_flag=True, help="Suggest crops that move images out of sparse buckets.")
@click.option("--max-loss", type=float, default=0.15, show_default=True,
              help="Largest share of an image a suggested crop may cut away.")
@click.option("--apply-to", type=click.Path(file_okay=False, path_type=Path),
              help="Write a copy of the dataset folder with the crops applied (sources untouched).")
@click.option("--resize", is_flag=True, help="With --apply-to: also pre-resize every image to its bucket.")
@output_options
def command(target: Path, resolution: int | None, min_bucket_reso: int | None, max_bucket_reso: int | None,
            bucket_reso_steps: int | None, bucket_no_upscale: bool | None, batch_size: int | None, fix: bool,
            max_loss: float, apply_to: Path | None, resize: bool, as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """How TARGET's images fall into sd-scripts' aspect-ratio buckets, and how to fix strays.

    \b
    TARGET is a workspace or a dataset folder; a dataset.toml there supplies the settings
    (flags override). Bucketing is sd-scripts' own: same bucket list, nearest aspect ratio,
    scale to cover and centre crop. Images alone in a bucket (fewer than the batch size) make
    batches of one; --fix proposes crops into the main buckets.

    \b
    Examples:
      curate buckets dataset
      curate buckets ws --resolution 768 --batch-size 4 --fix
      curate buckets dataset --fix --apply-to dataset-fixed --resize
    """
    from curate.stages.bucketing import buckets_for
    from curate.stages.bucketing.run import config_from, dataset_settings

    out = Out(as_json, quiet, verbose)
    config, batch = config_from(dataset_settings(target), {
        "resolution": resolution, "min_bucket_reso": min_bucket_reso, "max_bucket_reso": max_bucket_reso,
        "bucket_reso_steps": bucket_reso_steps, "bucket_no_upscale": bucket_no_upscale,
        "batch_size": batch_size})
    result = buckets_for(target, config, batch, fix=fix, max_loss=max_loss, apply_to=apply_to, resize=resize)
    if as_json:
        out.json(result.as_dict())
        return
    out.problems("skipped", result.skipped)
    for line in result.report.lines():
        out.line(line)
    for key, why in result.report.unbucketable.items():
        out.line(f"unbucketable: {key}: {why}")
    for f in result.fixes:
        out.line(f"fix: {f.key}: crop {f.crop_box} {f.source[0]}x{f.source[1]} -> bucket "
                 f"{f.target[0]}x{f.target[1]} (loses {f.lost_fraction:.0%})")
    if result.after is not None:
        after = result.after
        out.line(f"after fixes: {len(after.buckets)} buckets, {len(after.sparse_buckets)} sparse")
    if result.written:
        out.line(f"wrote {result.written} images to {apply_to}")
