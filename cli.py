"""The ``fedmosaic`` command line.

``run``, ``deploy-local``, ``credentials``, ``privacy-report``, ``tune-dp``, ``audit``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedmosaic.config import ConfigValue, RayResources, parse_overrides
from fedmosaic.launch.runs import RunFailedError, run_simulation

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Privacy-preserving federated multimodal learning for IoT, on Flower.")
console = Console()

ConfigPairs = Annotated[
    list[str] | None,
    typer.Option("--run-config", "-c", metavar="KEY=VALUE",
                 help="Override one run-config key (repeatable), e.g. -c num-server-rounds=5."),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", exists=True, dir_okay=False,
                 help="TOML file of run-config overrides (-c pairs win over it)."),
]
OutDir = Annotated[
    Path | None, typer.Option("--out", help="Run folder (default: runs/<run-name>).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _overrides(pairs: list[str] | None, config_file: Path | None) -> dict[str, ConfigValue]:
    try:
        return parse_overrides(pairs or [], config_file)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


def _report(summary: dict[str, Any], run_dir: Path) -> None:
    figures = [f"final accuracy {summary['final_accuracy']:.4f}"
               + (" (global model)" if summary.get("final_device_accuracy") is not None else "")]
    for key, label in (("final_device_accuracy", "on devices' own data"),
                       ("unseen_subject_accuracy", "on unseen devices")):
        if summary.get(key) is not None:
            figures.append(f"{label} {summary[key]:.4f}")
    if summary.get("missing_modality_drop_points") is not None:
        own = summary.get("final_device_missing_modality_drop_points")
        figures.append(f"worst missing-modality drop {summary['missing_modality_drop_points']:.1f}"
                       " points" + (f" (global model), {own:.1f} on devices' own data"
                                    if own is not None else ""))
    console.print(
        f"[green]done[/green]: {summary['rounds']} rounds, {', '.join(figures)}, "
        f"{summary['wall_seconds']:.0f} s\n"
        f"outputs: {run_dir}  (summary.json, summary.png, tensorboard/, checkpoints/)"
    )


def _execute(launch: Any, **kwargs: Any) -> None:
    try:
        summary = launch(**kwargs)
    except (ValueError, FileExistsError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    except RunFailedError as err:
        console.print(f"[red]run failed:[/red] {err}")
        raise typer.Exit(1) from err
    except KeyboardInterrupt as err:
        console.print("[yellow]interrupted[/yellow]: every process of the run was stopped; "
                      "rounds finished so far are in the run folder")
        raise typer.Exit(130) from err
    config = summary["config"]
    _report(summary, Path(config["out-dir"]) / config["run-name"])


@app.command()
def run(run_config: ConfigPairs = None, config: ConfigFile = None, out: OutDir = None,
        quiet: Quiet = False,
        ray_address: Annotated[str, typer.Option(
            help="Join this existing Ray cluster (its head's HOST:PORT, or auto) instead of "
                 "starting a private Ray; see README, \"A Ray cluster\".")] = "",
        client_cpus: Annotated[float, typer.Option(
            help="CPUs each simulated device (ClientApp actor) reserves.")] = 1.0,
        client_gpus: Annotated[float, typer.Option(
            help="GPUs (or a fraction of one) each simulated device reserves.")] = 0.0,
        ) -> None:
    """Run a Ray-backed simulation (default: smartwatch data, 10 clients, FedAvg)."""
    try:
        resources = RayResources(ray_address, client_cpus, client_gpus)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    _execute(run_simulation, overrides=_overrides(run_config, config), out=out,
             show_progress=not quiet, resources=resources)


@app.command("deploy-local")
def deploy_local(
    supernodes: Annotated[int, typer.Option(min=1, help="SuperNodes (devices) to start.")] = 2,
    edges: Annotated[int, typer.Option(
        min=0, help="Edge aggregators between devices and cloud, each with its own SuperLink "
                    "(0: devices connect to the cloud).")] = 0,
    run_config: ConfigPairs = None, config: ConfigFile = None, out: OutDir = None,
    quiet: Quiet = False,
    insecure: Annotated[bool, typer.Option(
        help="Plain-text gRPC/HTTP, no node authentication (default: TLS and registered "
             "SuperNodes).")] = False,
    credentials: Annotated[Path | None, typer.Option(
        exists=True, file_okay=False,
        help="A folder made by `fedmosaic credentials` (default: new credentials in "
             "RUN/credentials).")] = None,
    resume: Annotated[Path | None, typer.Option(
        exists=True, file_okay=False,
        help="Continue this stopped deploy-local run from its last checkpoint (its devices, "
             "edges, config and credentials; -c overrides apply on top).")] = None,
) -> None:
    """Start a SuperLink and SuperNodes on 127.0.0.1, run the app, shut everything down."""
    from fedmosaic.launch.deployment import deploy_locally, resume_locally

    if resume is not None:
        _execute(resume_locally, run_dir=resume, overrides=_overrides(run_config, config),
                 show_progress=not quiet, insecure=insecure)
        return
    _execute(deploy_locally, overrides=_overrides(run_config, config), supernodes=supernodes,
             edges=edges, out=out, show_progress=not quiet, insecure=insecure,
             credentials=credentials)


@app.command("credentials")
def credentials_command(
    devices: Annotated[int, typer.Option(min=0, help="Device SuperNodes to make keys for.")],
    out: Annotated[Path, typer.Option(help="Folder to write (README, \"Deploying\").")],
    edges: Annotated[int, typer.Option(min=0, help="Edge aggregators (a SuperLink "
                                                   "certificate and a SuperNode key each).")] = 0,
    cloud_host: Annotated[list[str] | None, typer.Option(
        help="Name or IP address the cloud SuperLink is reached by (repeatable; loopback "
             "names are always included).")] = None,
    edge_host: Annotated[list[str] | None, typer.Option(
        help="Name or IP address of each edge's SuperLink, one per edge in order.")] = None,
    valid_days: Annotated[int, typer.Option(min=1, help="Certificate lifetime.")] = 365,
) -> None:
    """Make a CA, TLS certificates for every SuperLink and an ECDSA P-384 key per SuperNode."""
    from fedmosaic.launch.credentials import create_credentials

    try:
        made = create_credentials(out, devices=devices, edges=edges,
                                  cloud_hosts=cloud_host or (),
                                  edge_hosts=edge_host or (), valid_days=valid_days)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print(f"credentials for {devices} device(s) and {edges} edge(s) in {made.folder}: "
                  f"CA {made.ca_certificate.name}, superlinks/, supernodes/ (keep ca.key "
                  f"offline)")


@app.command("privacy-report")
def privacy_report(
    run_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                            help="A run folder (runs/<run-name>).")],
) -> None:
    """Print a run's privacy ledger, its devices' risk scores and the controller's decisions.

    The ledger: ε spent, budget, rounds and refusals per device; the risk: per scored node;
    the controller: spend share, knobs and risk per device (and draws controller.png).
    """
    from fedmosaic.privacy.controller.report import controller_figure, controller_table
    from fedmosaic.privacy.report import ledger_table, load_ledger, risk_table

    try:
        console.print(ledger_table(load_ledger(run_dir)))
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    risks = risk_table(run_dir)
    if risks is not None:
        console.print(risks)
    decisions = controller_table(run_dir)
    if decisions is not None:
        console.print(decisions)
        console.print(f"budget and risk per device over rounds: {controller_figure(run_dir)}")


@app.command("tune-dp")
def tune_dp(
    run_config: ConfigPairs = None, config: ConfigFile = None,
    out: Annotated[Path | None, typer.Option(help="Also write the scores as JSON here.")] = None,
) -> None:
    """Choose DP-SGD's local epochs, learning rate and clipping bound on public donors' data.

    For the run's ε (dp-epsilon-budget), each setting is scored leave-one-donor-out on the
    public-devices' data (>= 2 donors, pretrain-epochs >= 1); no device's data is read, so no
    device spends ε. Prints every setting's accuracy and the -c overrides to run with.
    """
    from rich.table import Table

    from fedmosaic.config import RunConfig
    from fedmosaic.server.dp_tuning import as_report, candidates, tune_on_public_devices
    from fedmosaic.task import cached_dataset

    try:
        settings = RunConfig.from_mapping(_overrides(run_config, config))
        console.print(f"scoring {len(candidates())} DP-SGD settings at ε = "
                      f"{settings.dp_epsilon_budget:g} on {settings.public_devices} donors ...")
        scored = tune_on_public_devices(settings, cached_dataset(settings))
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    table = Table(*scored[0].candidate.overrides(), "accuracy (mean of folds)",
                  "per left-out donor",
                  title=f"DP-SGD at ε = {settings.dp_epsilon_budget:g}, left-out donors")
    for entry in scored:
        table.add_row(*(str(v) for v in entry.candidate.overrides().values()),
                      f"{entry.accuracy:.4f}",
                      " ".join(f"{a:.3f}" for a in entry.fold_accuracies))
    console.print(table)
    report = as_report(scored)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    console.print("run with: " + " ".join(f"-c {k}={v}" for k, v in report["best"].items()),
                  soft_wrap=True)  # one line, to copy


audit_app = typer.Typer(no_args_is_help=True, help="Check the controller's audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    run: Annotated[Path, typer.Argument(help="A run folder (or its controller-audit.jsonl).")],
) -> None:
    """Verify the hash chain of a run's controller audit log; name the first bad line.

    With the run's summary.json, its recorded last hash is checked too (lines cut off the end).
    """
    from fedmosaic.privacy.controller.audit import verify_audit_log
    from fedmosaic.server.controller_stage import AUDIT_FILE

    path = run if run.is_file() else run / AUDIT_FILE
    if not path.is_file():
        console.print(f"[red]error:[/red] expected an audit log at {path}, found none "
                      f"(a run with controller=none writes none)")
        raise typer.Exit(2)
    summary = path.parent / "summary.json"
    expected = None
    if summary.is_file():
        expected = (json.loads(summary.read_text()).get("controller") or {}).get(
            "audit_last_hash")
    verdict = verify_audit_log(path, expected_last_hash=expected)
    if not verdict.ok:
        console.print(f"[red]audit log TAMPERED[/red]: {verdict.reason}")
        raise typer.Exit(1)
    console.print(f"audit log OK: {verdict.entries} entries, last hash {verdict.last_hash}"
                  + ("" if expected else " (no summary.json to compare the last hash with)"))


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
