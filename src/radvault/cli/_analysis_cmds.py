"""Analysis commands: train, ensemble, recalibrate, evaluate, analyze, `data fetch`."""

from __future__ import annotations

import http.client
import json
import urllib.request
import zipfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from radvault.cli._common import console, handle_errors, progress_bar, settings_from_context
from radvault.errors import ConfigurationError, DatasetError, ObjectNotFound

__all__ = ["MEDMNIST_2D", "data_app", "medmnist_url", "register"]

data_app = typer.Typer(help="Fetch public datasets (needs internet; tests never do).",
                       no_args_is_help=True)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True,
                "help_option_names": []}

#: The 2-D MedMNIST v2 sets (28x28 official files).
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist",
               "retinamnist", "breastmnist", "bloodmnist", "tissuemnist", "organamnist",
               "organcmnist", "organsmnist")
_MEDMNIST_RECORD = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


def medmnist_url(name: str) -> str:
    """The official download address of a 2-D MedMNIST set (28x28)."""
    if name not in MEDMNIST_2D:
        raise ConfigurationError(f"unknown MedMNIST set {name!r}; one of {', '.join(MEDMNIST_2D)}")
    return _MEDMNIST_RECORD.format(name=name)


def train(ctx: typer.Context) -> None:
    """Train, calibrate, export and sign a model (`radvault train --help` for options)."""
    from radvault.cli.models import main as analysis_main

    raise typer.Exit(analysis_main(["train", *ctx.args], prog="radvault"))


def ensemble(ctx: typer.Context) -> None:
    """Combine trained models of one task into one signed model (`radvault ensemble --help`)."""
    from radvault.cli.models import main as analysis_main

    raise typer.Exit(analysis_main(["ensemble", *ctx.args], prog="radvault"))


def recalibrate(ctx: typer.Context) -> None:
    """Fit a model's calibration again on validation data (`radvault recalibrate --help`)."""
    from radvault.cli.models import main as analysis_main

    raise typer.Exit(analysis_main(["recalibrate", *ctx.args], prog="radvault"))


def evaluate(ctx: typer.Context) -> None:
    """Metrics of a model on one split (`radvault evaluate --help` for options)."""
    from radvault.cli.models import main as analysis_main

    raise typer.Exit(analysis_main(["evaluate", *ctx.args], prog="radvault"))


def analyze(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="An image FILE, or a vault study/instance ID.")],
    model: Annotated[Path | None, typer.Option(help="A model folder (default: registry).")] = None,
    modality: Annotated[str | None, typer.Option(
        help="Modality of a PNG/JPEG file, a DICOM defined term (PS3.3: DX, CR, CT, MR, US, "
             "MG, OT...); any other is refused.")] = None,
    body_part: Annotated[str | None, typer.Option(
        help="Body part of a PNG/JPEG file, a DICOM defined term (PS3.16 Annex L: CHEST, "
             "HEAD, BRAIN, ABDOMEN...); any other is refused.")] = None,
    heatmap: Annotated[Path | None, typer.Option(
        help="Write the CAM overlay PNG here (one image or instance).")] = None,
    keys: Annotated[Path | None, typer.Option(
        help="Folder of trusted model public keys (default: the models' keys folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Classify an image, or every instance of a vault study (in batches): calibrated
    probabilities and the decision-support flag. Exit status 1 if an instance failed
    verification (the others are still analysed)."""

    @handle_errors
    def run() -> None:
        from radvault.analysis.export import CARD_FILE
        from radvault.cli._vault_cmds import typed_hints

        path = Path(target)
        settings = settings_from_context(ctx)
        typed_modality, typed_body_part = typed_hints(modality, body_part)
        if heatmap is not None and not heatmap.parent.is_dir():
            raise ConfigurationError(f"--heatmap: no folder {heatmap.parent}")
        if model is not None and not model.is_dir():
            raise ObjectNotFound(f"--model: no model folder {model}")
        if model is not None and not (model / CARD_FILE).is_file():
            raise ObjectNotFound(f"--model: {model} holds no model ({CARD_FILE} is missing)")
        if keys is not None and not keys.is_dir():
            raise ObjectNotFound(f"--keys: no folder {keys}")
        if len(target) > 4096 or any(len(part) > 255 for part in path.parts):
            raise ConfigurationError("the target is too long to be a file name, a study id "
                                     "or an instance id")
        if path.is_file():
            results = [_analyze_file(path, model, typed_modality, typed_body_part, heatmap,
                                     keys, settings.refer_threshold)]
        elif path.is_dir():
            raise ConfigurationError(f"{target} is a folder: analyze takes one image file, or "
                                     "a study or instance id of the vault (ingest a folder "
                                     "first, then analyze its study)")
        elif _looks_like_a_file(target):
            raise ObjectNotFound(f"no such file: {target}")
        else:
            if typed_modality or typed_body_part:  # the vault's catalog says what it is
                raise ConfigurationError("--modality and --body-part label an image FILE; a "
                                         "vault study or instance keeps what was recorded "
                                         "at ingest")
            results = _analyze_vault(settings, target, model, heatmap, keys)
        failed = [r for r in results if "error" in r]
        from radvault.reports import percent  # as reports and the web pages print them

        if as_json:
            typer.echo(json.dumps(results, indent=2))
            if failed:
                raise typer.Exit(1)
            return
        for r in results:
            if "error" in r:
                console.print(f"[red]{r['target']}: not analysed[/] ({r['error']})")
                continue
            table = Table(title=f"{r['target']}  model {r['model_id']}",
                          caption="< the predicted class")
            table.add_column("class")
            table.add_column("probability", justify="right")
            for cls, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]):
                mark = " <" if cls == r["prediction"] else ""
                table.add_row(cls + mark, percent(p))
            console.print(table)
            if r["refer"]:
                console.print(f"[yellow]refer to a radiologist[/] ({', '.join(r['reasons'])})")
                unlabelled = (path.is_file() and not (typed_modality and typed_body_part)
                              and path.suffix.lower() in (".png", ".jpg", ".jpeg"))
                if unlabelled and {"modality_not_trained", "body_part_unknown"} & set(
                        r["reasons"]):
                    console.print("[dim]a PNG or JPEG says nothing of what it shows: give "
                                  "--modality and --body-part (DICOM files carry them)[/]")
            else:
                console.print(f"prediction: [bold]{r['prediction']}[/] "
                              f"({percent(r['probability'])})")
            check = r.get("image_check")
            if isinstance(check, dict):
                from radvault.reports import image_check_in_words

                console.print("image check: " + image_check_in_words(
                    check, modality=r.get("modality"), body_part=r.get("body_part")))
        if failed:
            console.print(f"[red]{len(failed)} of {len(results)} instances not analysed[/]")
            raise typer.Exit(1)

    run()


#: Endings of the files `analyze` reads; a target with one (or with a folder in it) that
#: does not exist is a missing file, not a vault id.
_FILE_ENDINGS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def _looks_like_a_file(target: str) -> bool:
    return "/" in target or "\\" in target or target.lower().endswith(_FILE_ENDINGS)


def _analyze_file(path: Path, model_dir: Path | None, modality: str | None,
                  body_part: str | None, heatmap: Path | None, keys: Path | None,
                  refer_threshold: float) -> dict[str, object]:
    from radvault.pipeline.file_analysis import analyse_file

    result = analyse_file(path, model_dir=model_dir, modality=modality, body_part=body_part,
                          keys_dir=keys, refer_threshold=refer_threshold,
                          heatmap=heatmap is not None)
    if heatmap is not None and result.heatmap_png is not None:
        heatmap.write_bytes(result.heatmap_png)
    pred = result.prediction
    return {"target": str(path), "model_id": pred.model_id, "prediction": pred.label,
            "probability": pred.probability, "probabilities": dict(pred.probabilities),
            "refer": pred.refer, "reasons": list(pred.reasons),
            "modality": result.modality, "body_part": result.body_part,
            **({"image_check": dict(pred.image_check)} if pred.image_check else {})}


def _analyze_vault(settings: object, target: str, model_dir: Path | None,
                   heatmap: Path | None, keys: Path | None) -> list[dict[str, object]]:
    from radvault.cli._vault_cmds import ACTOR, opened_vault
    from radvault.pipeline.analyse import Analyser
    from radvault.pipeline.retrieve import safe_error

    out: list[dict[str, object]] = []
    with opened_vault(settings) as vault:
        analyser = Analyser.default(vault, actor=ACTOR, models_dir=None)
        if model_dir is not None:
            from radvault.analysis.registry import ModelRegistry

            analyser = Analyser(vault, ModelRegistry(model_dir.parent, keys_dir=keys),
                                actor=ACTOR)
        elif keys is not None:
            from radvault.analysis.registry import ModelRegistry

            analyser = Analyser(vault, ModelRegistry(keys_dir=keys), actor=ACTOR)
        name = model_dir.name if model_dir is not None else None
        instances = analyser.instances_of(target)
        if heatmap is not None and len(instances) > 1:
            raise ConfigurationError(f"--heatmap draws one image: study {target} has "
                                     f"{len(instances)} instances; give an instance id")
        if len(instances) == 1:
            results = [analyser.analyse_instance(instances[0], model_name=name)]
            if heatmap is not None:
                heatmap.write_bytes(analyser.heatmap_png(instances[0], model_name=name))
        else:  # a study: batched inference, one commit per batch
            with progress_bar() as bar:
                task = bar.add_task(f"analysing {len(instances)} instances",
                                    total=len(instances))
                batch = analyser.analyse_many(instances, model_name=name,
                                              progress=lambda n: bar.advance(task, n))
            results = batch.results
            out.extend({"target": i, "error": safe_error(exc)} for i, exc in batch.failures)
        studies = {r.study_id: vault.catalog.get_study(r.study_id) for r in results}
        out[:0] = [{"target": r.instance_id, "model_id": r.model_id,
                    "prediction": r.predicted_class, "probability": r.probability,
                    "probabilities": r.probabilities, "refer": r.refer,
                    "reasons": list(r.reasons), "result_id": r.result_id,
                    "modality": studies[r.study_id].modality or "",
                    "body_part": studies[r.study_id].body_part or "",
                    **({"image_check": r.extra["image_check"]} if "image_check" in r.extra
                       else {})} for r in results]
    return out


@data_app.command("fetch")
def data_fetch(
    source: Annotated[str, typer.Argument(help="Only 'medmnist' for now.")],
    name: Annotated[str, typer.Argument(help="e.g. pneumoniamnist, breastmnist.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the .npz.")] = Path("data"),
    md5: Annotated[str | None, typer.Option(
        "--md5", help="Expected MD5 (hex) of the file, as the Zenodo record lists it; "
                      "a file that differs is not kept.")] = None,
    sha256: Annotated[str | None, typer.Option(
        "--sha256", help="Expected SHA-256 (hex) of the file; a file that differs is not "
                         "kept.")] = None,
) -> None:
    """Download an official MedMNIST v2 .npz (28x28), check it loads, print its digests.

    Without --md5 or --sha256 nothing vouches for the bytes but TLS: compare the printed
    MD5 with the one the Zenodo record lists for the file, or pass it as --md5.
    """

    @handle_errors
    def run() -> None:
        import hashlib

        import numpy as np

        if source != "medmnist":
            raise ConfigurationError("only 'medmnist' can be fetched")
        url = medmnist_url(name)
        expected = {algo: _hex_digest(f"--{algo}", value, size)
                    for algo, value, size in (("md5", md5, 32), ("sha256", sha256, 64))
                    if value is not None}
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{name}.npz"
        partial = target.with_suffix(".npz.partial")
        digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
        try:
            with (urllib.request.urlopen(url, timeout=60) as response,  # noqa: S310 (fixed https URL)
                  open(partial, "wb") as fh):
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress_bar() as bar:
                    task = bar.add_task(f"fetching {name}", total=total)
                    while chunk := response.read(1 << 16):
                        fh.write(chunk)
                        for digest in digests.values():
                            digest.update(chunk)
                        bar.advance(task, len(chunk))
        # URLError, timeouts and a full disk are OSErrors; a connection cut mid-body
        # raises http.client.IncompleteRead, an HTTPException
        except (OSError, http.client.HTTPException) as exc:
            partial.unlink(missing_ok=True)
            raise DatasetError(f"could not download {url}: {exc}") from None
        got = {algo: digest.hexdigest() for algo, digest in digests.items()}
        for algo, want in expected.items():
            if got[algo] != want:  # public digests, not secrets: no constant time needed
                partial.unlink(missing_ok=True)
                raise DatasetError(f"{url}: {algo} {got[algo]} is not the expected {want}; "
                                   "the file was not kept")
        try:
            with np.load(partial, allow_pickle=False) as npz:
                missing = {"train_images", "train_labels", "test_images"} - set(npz.files)
        except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            partial.unlink(missing_ok=True)
            raise DatasetError(f"{url}: not a MedMNIST .npz ({exc})") from None
        if missing:
            partial.unlink(missing_ok=True)
            raise DatasetError(f"{url}: .npz lacks {', '.join(sorted(missing))}")
        partial.replace(target)
        from radvault.analysis.datasets import MEDMNIST_CLASSES

        checked = ", ".join(f"{algo} matches" for algo in expected) or (
            "not checked against a published digest: compare the md5 with the Zenodo record")
        console.print(f"md5 {got['md5']}\nsha256 {got['sha256']}\n({checked})",
                      highlight=False)
        # the .npz holds label numbers only: other sets need their names, in label order
        hint = "" if name in MEDMNIST_CLASSES else " --classes NAME0,NAME1,..."
        console.print(f"saved {target}; train with: radvault train --medmnist {target}{hint} ...")

    run()


def _hex_digest(option: str, value: str, length: int) -> str:
    """``value`` as lower-case hex of ``length`` digits, or a clear error naming ``option``."""
    text = value.strip().lower()
    if len(text) != length or any(c not in "0123456789abcdef" for c in text):
        raise ConfigurationError(f"{option} must be {length} hexadecimal digits")
    return text


def register(app: typer.Typer) -> None:
    """Add the analysis commands to the root application."""
    app.command(context_settings=_PASSTHROUGH, add_help_option=False)(train)
    app.command(context_settings=_PASSTHROUGH, add_help_option=False)(ensemble)
    app.command(context_settings=_PASSTHROUGH, add_help_option=False)(recalibrate)
    app.command(context_settings=_PASSTHROUGH, add_help_option=False)(evaluate)
    app.command()(analyze)
    app.add_typer(data_app, name="data")
