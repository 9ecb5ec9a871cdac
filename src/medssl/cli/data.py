"""``medssl data``: synthesize embedded datasets, prepare the left-atrium layout, inspect and preview."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Datasets: synthesize, prepare, inspect, preview.", no_args_is_help=True)


@app.command("synth")
def synth(
    name: str = typer.Argument(..., help="atrium3d | brain2d | brain3d | chest2d"),
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist or be empty)."),
    n: int = typer.Option(8, "--n", help="Number of images / volumes."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty folder."),
    shape: str | None = typer.Option(None, "--shape", help="Image size, e.g. 64,64,48 (same field of view; "
                                     "the voxel spacing scales). Default: the dataset's own."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of a progress bar."),
) -> None:
    """Generate an embedded dataset deterministically and write it as ordinary NIfTI / PNG / JSON."""
    from medssl.data.synthetic import synthesize
    from medssl.errors import MedsslInputError

    size = None
    if shape is not None:
        try:
            size = tuple(int(v) for v in shape.replace("x", ",").split(","))
        except ValueError:
            raise MedsslInputError("--shape", f"expected integers like 64,64,48, got {shape!r}") from None
    root = synthesize(name, out, n=n, seed=seed, overwrite=overwrite, shape=size, quiet=quiet)
    typer.echo(f"wrote {name} ({n} cases, seed {seed}) to {root}")


@app.command("prepare-la")
def prepare_la_cmd(
    raw: Path = typer.Argument(..., help="Folder of cases, each with lgemri.nrrd and laendo.nrrd."),
    out: Path = typer.Argument(..., help="Output root: <out>/<case>/mri_norm2.h5."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random crop margins."),
    label_free_crop: bool = typer.Option(
        False, "--label-free-crop",
        help="Crop around the image foreground instead of the label bounding box (no label leakage)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Convert the raw 2018 Atrial Segmentation Challenge files to the standard HDF5 layout."""
    from medssl.data.la import prepare_la

    written = prepare_la(raw, out, seed=seed, label_free_crop=label_free_crop, overwrite=overwrite)
    typer.echo(f"wrote {len(written)} cases to {out}")


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="An image file, a DICOM series folder or a dataset folder (nnunet:<folder> for the nnU-Net layout)."),
    label: Path | None = typer.Option(None, "--label", help="Label file to check against the image."),
) -> None:
    """Print shape, spacing, intensity and label statistics, and any problems found."""
    from medssl.data.inspect import inspect_path

    report = inspect_path(path, label=label)
    typer.echo(report.format())
    if report.problems:
        raise typer.Exit(2)


@app.command("preview")
def preview_cmd(
    path: Path = typer.Argument(..., help="An image file or DICOM series folder."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    label: Path | None = typer.Option(None, "--label", help="Label to outline on the slices."),
    n_slices: int = typer.Option(9, "--slices", help="Number of slices in the montage (3D)."),
) -> None:
    """Write a montage of slices with the label outlined."""
    from medssl.data.preview import write_preview

    written = write_preview(path, out, label=label, n_slices=n_slices)
    typer.echo(f"wrote {written}")
