"""The cloud ServerApp: run the server chain, evaluate centrally, record and checkpoint rounds."""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import as_held, named_column
from fedmosaic.data.datasets import FederatedDataset, is_file_dataset
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.data.report import partition_report, partition_warnings
from fedmosaic.models.missing_modality import (
    ModalityRemoval,
    remove_each_modality,
    worst_drop_points,
)
from fedmosaic.models.personalization import personal_keys
from fedmosaic.models.training import evaluate, make_loader
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.training import (
    AnonymizerTraining,
    TrainedAnonymizer,
    load_anonymizer,
    save_anonymizer,
)
from fedmosaic.privacy.controller.report import controller_figure
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.privacy.risk.sensitivity import parse_sensitivities
from fedmosaic.server.anonymizer_rounds import train_federated_anonymizer
from fedmosaic.server.anonymizer_stage import AnonymizerStage
from fedmosaic.server.async_rounds import AsyncRounds, StalenessFilter
from fedmosaic.server.chain import build_chain
from fedmosaic.server.continuation import Continuation
from fedmosaic.server.controller_stage import ControllerStage, controller_scalars
from fedmosaic.server.edge.configured import cloud_config
from fedmosaic.server.edge.edge_server import serve_edge
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.latency import SimulatedClock
from fedmosaic.server.privacy_ledger import PrivacyLedgerStrategy, resume
from fedmosaic.server.public_pretraining import pretrain_on_public_devices
from fedmosaic.server.recorder import RoundRecord, RunRecorder
from fedmosaic.server.risk_stage import RiskStage
from fedmosaic.server.secure_aggregation import SecureAggregationStage
from fedmosaic.server.traffic import MeteredStrategy
from fedmosaic.server.unseen_devices import evaluate_unseen_devices
from fedmosaic.server.validation import ValidatingStrategy
from fedmosaic.strategies.registry import strategy_class
from fedmosaic.task import build_model, cached_dataset

log = logging.getLogger("fedmosaic")
app = ServerApp()


def warn_pointless_settings(config: RunConfig) -> None:
    """Log legal settings that have no effect."""
    if config.proximal_mu > 0 and config.strategy != "fedprox":
        log.warning("proximal-mu=%s has no effect with strategy=%s (only fedprox sends it)",
                    config.proximal_mu, config.strategy)
    server_optimizer = (config.server_learning_rate != 1.0, config.server_momentum != 0.0)
    takes_server_step = issubclass(strategy_class(config.strategy), flower.FedAvgM)
    if any(server_optimizer) and not takes_server_step:
        log.warning("server-learning-rate=%s and server-momentum=%s have no effect with "
                    "strategy=%s (only fedavgm takes them)", config.server_learning_rate,
                    config.server_momentum, config.strategy)
    if config.server_momentum and takes_server_step and config.resume_from:
        log.warning("resume-from with server-momentum=%s: the momentum is not checkpointed and "
                    "starts again from zero", config.server_momentum)
    if config.partitioner != "iid" and not is_file_dataset(config.dataset):
        log.warning("partitioner=%s has no effect with dataset=%s (it splits data files "
                    "without a device column)", config.partitioner, config.dataset)
    if config.personalization != "none" and config.num_edges and config.edge_role == "cloud":
        log.warning("personalization=%s with deployed edges: federated evaluation does not go "
                    "through the edges, so device_accuracy and device_missing_modality are not "
                    "measured; the central figures are the global model's",
                    config.personalization)
    if config.personalization != "none" and config.resume_from:
        log.warning("resume-from with personalization=%s: devices without a state-dir start "
                    "their personal parameters again from the global ones (simulation keeps "
                    "them in memory only)", config.personalization)
    if config.fine_tune != "all" and not (config.pretrain_epochs or config.resume_from):
        log.warning("fine-tune=%s without pretrain-epochs or resume-from: %s stay at their "
                    "random initialisation for the whole run", config.fine_tune,
                    "the encoders" if config.fine_tune == "top" else "all but the classifier")
    if config.missing_modality_name and not config.missing_modality_devices:
        log.warning("missing-modality-name=%s has no effect with missing-modality-devices=0 "
                    "(no device lacks a modality)", config.missing_modality_name)
    if config.public_devices and not config.pretrain_epochs:
        log.warning("public-devices=%d with pretrain-epochs=0: the donors' data is not used",
                    config.public_devices)
    if config.controller != "none" and config.dp_accountant != "rdp":
        log.warning("dp-accountant=%s has no effect with controller=%s (adaptive budgets are "
                    "accounted by the Rényi filter)", config.dp_accountant, config.controller)
    unused = {"device-topk": config.device_topk != 1.0, "edge-topk": config.edge_topk != 1.0,
              "edge-bits": config.edge_bits != 32,
              # secure aggregation quantizes to device-bits' levels with or without edges
              "device-bits": config.device_bits != 32 and not config.secure_aggregation}
    if config.num_edges == 0 and any(unused.values()):
        log.warning("%s have no effect with num-edges=0 (no edge tier; devices send float32 "
                    "weights to the cloud)", ", ".join(k for k, v in unused.items() if v))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds and write the run folder."""
    config = RunConfig.from_mapping(context.run_config)
    random.seed(config.seed)  # Flower's strategies sample nodes with the global ``random``
    if config.edge_role == "edge":
        serve_edge(grid, config)
        return
    run_dir = config.run_dir()
    log.info("fedmosaic run %s: %s", run_dir, config.to_mapping())
    warn_pointless_settings(config)

    parse_sensitivities(config.risk_sensitivities)  # a bad table fails now, not rounds later
    dataset = cached_dataset(config)
    if dataset.num_partitions < config.num_partitions:
        raise ValueError(f"num-clients + unseen-devices + public-devices = "
                         f"{config.num_partitions} partitions needed, the dataset has "
                         f"{dataset.num_partitions}")
    named_column(config, dataset.specs)  # an unknown modality fails now, not on the devices
    model = build_model(config, dataset)
    personal_keys(model, config.personalization)  # a model without such layers fails now
    central_test = dataset.central_test_without(config.public_partitions)
    test_loader = make_loader(central_test, dataset.specs, 256, shuffle=False, seed=0)
    ledger, resumed_round = PrivacyLedger(accountant=config.accountant), 0
    continued = Continuation()
    if config.resume_from:  # the global weights into ``model``, the ledger from the checkpoint
        checkpoint = Path(config.resume_from).expanduser()
        ledger, resumed_round = resume(checkpoint, model)
        if ledger.accountant != config.accountant:
            raise ValueError(f"resume-from: the checkpoint's ledger composes with "
                             f"{ledger.accountant!r}, this run with {config.accountant!r} "
                             f"(controller={config.controller}); resume with the same "
                             f"controller and dp-accountant")
        continued = Continuation.of(checkpoint, run_dir, config.num_server_rounds)
    pretraining = None
    if config.pretrain_epochs and not config.resume_from:  # a checkpoint is already trained
        pretraining = pretrain_on_public_devices(config, dataset, model)
        log.info("pretrained on the public devices' data: %s", pretraining)
    if config.device_state == "disk" and not config.resume_from:  # new run: devices start afresh
        shutil.rmtree(run_dir / records.DEVICE_STATE_FOLDER, ignore_errors=True)
    if not continued.rounds_done:  # a new run in a reused folder: no earlier attempt's rounds
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    recorder = RunRecorder(run_dir, config.to_mapping(), history=continued.history,
                           initial_accuracy=continued.initial_accuracy)
    generator, anonymizer_history = prepare_anonymizer(grid, config, dataset, recorder,
                                                       continued.rounds_done > 0)
    chain = build_chain(config, ledger, round_offset=resumed_round,
                        rounds_done=continued.rounds_done, anonymizer=generator,
                        run_dir=run_dir, anonymizer_signal=anonymizer_history[-1]
                        if anonymizer_history else None)
    traffic_meter = chain.get(MeteredStrategy)
    validation = chain.get(ValidatingStrategy)
    staleness = chain.find(StalenessFilter)
    clock = chain.find(SimulatedClock)
    cloud_rejections = [chain.get(PrivacyLedgerStrategy).rejections, validation.rejections,
                        *([staleness.rejections] if staleness else [])]
    edge_tier = chain.find(HierarchicalStrategy)
    anonymizer_stage = chain.find(AnonymizerStage)
    risk_stage = chain.find(RiskStage)
    controller = chain.find(ControllerStage)
    secure = chain.find(SecureAggregationStage)
    if secure is not None:
        cloud_rejections.append(secure.rejections)
    try:
        report = partition_report(
            dataset, num_devices=config.num_clients,
            held=lambda arrays, device: as_held(config, arrays, device, dataset.specs))
    except ValueError as error:  # partitions that only exist on the devices
        log.warning("partitions: no report, the server cannot read them (%s)", error)
    else:
        log.info("%s", report.table())
        warnings = partition_warnings(report)
        for warning in warnings:
            log.warning("partitions: %s", warning)
        recorder.record_partitions(report, warnings)
    round_started = time.time()
    run_token = continued.run_token or secrets.token_hex(8)  # new run, new token

    def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal round_started
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            central = evaluate(model, test_loader, dataset.specs)
        if controller is not None:
            controller.observe_evaluation(server_round, central.accuracy, central.loss)
        if server_round == 0:
            if recorder.initial_accuracy is None:  # a continued run keeps its first model's
                recorder.initial_accuracy = central.accuracy
            round_started = time.time()
            return MetricRecord({"accuracy": central.accuracy, "loss": central.loss})
        run_round = continued.rounds_done + server_round  # the round of the run, resumed or not
        traffic = traffic_meter.rounds[server_round]
        protocol = secure.round_figures(server_round) if secure is not None else None
        train_metrics = traffic_meter.train_metrics.get(server_round)
        eval_metrics = traffic_meter.evaluate_metrics.get(server_round)
        recorder.record_round(RoundRecord(
            round=run_round,
            accuracy=central.accuracy,
            loss=central.loss,
            bytes_up=traffic.bytes_up + (protocol["bytes_up"] if protocol else 0),
            bytes_down=traffic.bytes_down + (protocol["bytes_down"] if protocol else 0),
            seconds=time.time() - round_started,
            simulated_seconds=clock.at.get(server_round) if clock is not None else None,
            train_loss=_metric(train_metrics, records.TRAIN_LOSS),
            federated_accuracy=_metric(eval_metrics, records.EVAL_ACCURACY),
            federated_loss=_metric(eval_metrics, records.EVAL_LOSS),
            device_accuracy=_mean(validation.device_accuracies.get(server_round)),
            **device_missing_modality(validation.device_missing_modality.get(server_round)),
            replies=traffic.replies_up,
            failed_replies=traffic.failed_replies,
            rejected=sum(r.count(server_round) for r in cloud_rejections),
            rejected_reasons=dict(sorted(sum((Counter(r.reasons(server_round))
                                              for r in cloud_rejections), Counter()).items())),
            evaluate_rejected=validation.evaluate_rejections.count(server_round),
            **(anonymizer_stage.round_releases(server_round) if anonymizer_stage else {}),
            risk=risk_stage.round_scores(server_round) if risk_stage else None,
            controller=controller.round_decisions(server_round) if controller else None,
            secure_aggregation=protocol,
            **(edge_tier.round_traffic(server_round) if edge_tier is not None else {}),
        ))
        recorder.checkpoint(run_round, model.state_dict(), {
            "round": run_round,
            "strategy": config.strategy,
            "traffic": {r: vars(t) for r, t in traffic_meter.rounds.items()},
            "privacy": ledger.state_dict(),
            "run_token": run_token,
        })
        recorder.add_scalars(ledger.scalars(), run_round)
        if risk_stage is not None and risk_stage.scores.get(server_round):
            risks = [s.score for s in risk_stage.scores[server_round].values()]
            recorder.add_scalars({"risk/mean": float(np.mean(risks)),
                                  "risk/max": float(np.max(risks))}, run_round)
        if controller is not None:
            recorder.add_scalars(controller_scalars(controller.round_decisions(server_round)),
                                 run_round)
        round_started = time.time()
        return MetricRecord({"accuracy": central.accuracy, "loss": central.loss})

    initial_arrays = ArrayRecord(model.state_dict())
    asynchronous = None
    rounds_left = config.num_server_rounds - continued.rounds_done
    if staleness is not None:  # mode = async
        # the cloud's nodes: the devices, or the deployed edges (edge-role = cloud)
        asynchronous = AsyncRounds(dataclasses.replace(cloud_config(config),
                                                       num_server_rounds=rounds_left),
                                   chain.strategy, staleness, clock, edge_tier)
        final_arrays = asynchronous.run(grid, initial_arrays, evaluate_and_record)
    else:
        outcome = chain.strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=rounds_left,
            timeout=config.round_timeout,
            train_config=ConfigRecord({records.LEARNING_RATE: config.learning_rate,
                                       records.ROUND_OFFSET: continued.rounds_done,
                                       records.RUN_TOKEN: run_token}),
            evaluate_fn=evaluate_and_record,
        )
        # Flower's result holds arrays only if some round aggregated; else the start is final
        final_arrays = outcome.arrays if len(outcome.arrays) else initial_arrays
    final_figures = learning_figures(config, dataset, central_test,
                                     final_arrays.to_torch_state_dict())
    if recorder.history:
        recorder.add_scalars({f"final/{name}": value for name, value in final_figures.items()
                              if isinstance(value, float)}, recorder.history[-1].round)
    summary = recorder.finish({"privacy": ledger.state_dict(), **final_figures,
                               **({"controller": controller.summary()} if controller else {}),
                               **({"anonymizer": anonymizer_history} if anonymizer_history
                                  else {}),
                               **({"pretraining": pretraining} if pretraining else {}),
                               **({"async": asynchronous.summary()} if asynchronous else {})})
    if controller is not None:
        controller_figure(run_dir)
    log.info("final accuracy %.4f after %d rounds; outputs in %s",
             summary["final_accuracy"], summary["rounds"], run_dir)


def prepare_anonymizer(grid: Grid, config: RunConfig, dataset: FederatedDataset,
                       recorder: RunRecorder, continuing: bool = False
                       ) -> tuple[MultimodalAnonymizer | None, list[dict[str, float]]]:
    """The run's generator and the history of its federated rounds.

    Trained in ``anonymizer-rounds`` federated rounds (saved as ``anonymizer.pt`` in the run
    folder, its rounds in TensorBoard under ``anonymizer/``), loaded from ``anonymizer``, or
    ``None``. A ``continuing`` run loads the one it trained before it stopped.
    """
    if config.anonymizer:
        return load_anonymizer(Path(config.anonymizer).expanduser(), dataset.specs), []
    if not config.anonymizer_rounds:
        return None, []
    trained = recorder.run_dir / "anonymizer.pt"
    if continuing and trained.is_file():
        return load_anonymizer(trained, dataset.specs), []
    outcome = train_federated_anonymizer(grid, config, dataset)
    for entry in outcome.history:
        recorder.add_scalars({f"anonymizer/{k}": v for k, v in entry.items() if k != "round"},
                             int(entry["round"]))
    save_anonymizer(TrainedAnonymizer(outcome.models.generator, outcome.models.num_attributes,
                                      AnonymizerTraining.from_config(config), outcome.history),
                    recorder.run_dir / "anonymizer.pt")
    return outcome.models.generator, outcome.history


def learning_figures(config: RunConfig, dataset: FederatedDataset, central_test: MultimodalArrays,
                     global_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the final model does where training did not look.

    ``missing_modality``: per modality, the central test accuracy with and without it
    (:func:`~fedmosaic.models.missing_modality.remove_each_modality`), and
    ``missing_modality_drop_points``, the worst drop; with ``unseen-devices``,
    ``unseen_devices`` (accuracy per held-out partition) and their mean,
    ``unseen_subject_accuracy``, and ``unseen_subject_accuracy_head_fitted``, the mean when
    every newcomer fits the classifier head alone (:mod:`fedmosaic.server.unseen_devices`).
    Under ``personalization`` these are figures of the global model, whose personal
    parameters never trained (FedRep's head is its initial one); what the models the devices
    predict with lose is ``device_missing_modality`` in the history.
    """
    model = build_model(config, dataset)
    model.load_state_dict(global_state)
    removals = remove_each_modality(model, central_test, dataset.specs)
    figures: dict[str, Any] = {
        "missing_modality": {name: asdict(removal) for name, removal in removals.items()},
        "missing_modality_drop_points": worst_drop_points(removals),
    }
    if config.unseen_devices:
        unseen = evaluate_unseen_devices(config, dataset, global_state)
        figures["unseen_devices"] = {str(p): accuracy for p, accuracy in unseen.items()}
        figures["unseen_subject_accuracy"] = float(np.mean(list(unseen.values())))
        head_fitted = evaluate_unseen_devices(config, dataset, global_state, fit="head")
        figures["unseen_subject_accuracy_head_fitted"] = float(np.mean(list(
            head_fitted.values())))
    return figures


def device_missing_modality(removals: dict[str, ModalityRemoval] | None) -> dict[str, Any]:
    """A round's :class:`RoundRecord` fields of the devices' models missing a modality."""
    if not removals:
        return {}
    return {"device_missing_modality": {name: asdict(r) for name, r in removals.items()},
            "device_missing_modality_drop_points": worst_drop_points(removals)}


def _mean(values: list[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])  # type: ignore[arg-type]
