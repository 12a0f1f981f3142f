import itertools
import math

import pytest
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedMedian

from fedmosaic.config import RunConfig
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.server.anonymizer_stage import AnonymizerStage
from fedmosaic.server.chain import ServerChain, build_chain
from fedmosaic.server.collusion import CollusionSimulation
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.node_loss import NodeLossStage
from fedmosaic.server.privacy_ledger import CentralDPAccounting, PrivacyLedgerStrategy
from fedmosaic.server.risk_stage import RiskStage
from fedmosaic.server.traffic import MeteredStrategy
from fedmosaic.server.validation import ValidatingStrategy
from fedmosaic.strategies.fedavg import FedAvg
from fedmosaic.task import cached_dataset


def chain_of(**overrides):
    return build_chain(RunConfig.from_mapping(overrides), PrivacyLedger())


def kinds(chain):
    return [type(stage) for stage in chain.stages]


def test_the_default_chain_meters_enters_the_ledger_validates_and_aggregates():
    chain = chain_of(**{"strategy": "fedmedian", "max-update-norm": 3.0})

    assert kinds(chain) == [NodeLossStage, MeteredStrategy, RiskStage, PrivacyLedgerStrategy,
                            ValidatingStrategy, FedMedian]
    for outer, inner in itertools.pairwise(chain.stages):
        assert outer.strategy is inner
    assert chain.strategy is chain.stages[0]
    assert chain.get(ValidatingStrategy).max_norm == 3.0
    assert chain.find(HierarchicalStrategy) is None
    specs = cached_dataset(RunConfig.from_mapping({})).specs
    assert chain.get(ValidatingStrategy).evaluate_contract.modalities == tuple(
        spec.name for spec in specs)


def test_every_stage_in_the_documented_order():
    edges = chain_of(**{"num-clients": 10, "num-edges": 2})
    colluding = chain_of(**{"num-clients": 10, "attack": "ipm", "malicious-fraction": 0.2})
    central = chain_of(**{"central-dp": "server", "num-clients": 10, "fraction-train": 0.3})
    anonymized = build_chain(
        RunConfig.from_mapping({"anonymizer-rounds": 1, "anonymize-training": True,
                                "risk-perception": False}),
        PrivacyLedger(), anonymizer=MultimodalAnonymizer(
            cached_dataset(RunConfig.from_mapping({})).specs, token_dim=8))

    assert kinds(edges) == [NodeLossStage, MeteredStrategy, HierarchicalStrategy,
                            PrivacyLedgerStrategy, ValidatingStrategy, FedAvg]
    assert kinds(colluding) == [NodeLossStage, MeteredStrategy, RiskStage, PrivacyLedgerStrategy,
                                CollusionSimulation, ValidatingStrategy, FedAvg]
    assert kinds(central) == [NodeLossStage, MeteredStrategy, RiskStage, PrivacyLedgerStrategy,
                              ValidatingStrategy, CentralDPAccounting,
                              DifferentialPrivacyServerSideFixedClipping, FedAvg]
    assert kinds(anonymized) == [NodeLossStage, MeteredStrategy, AnonymizerStage,
                                 PrivacyLedgerStrategy, ValidatingStrategy, FedAvg]
    default = chain_of()  # the risk stage counts what the ledger and validation reject
    assert default.get(RiskStage).rejections == [default.get(PrivacyLedgerStrategy).rejections,
                                                  default.get(ValidatingStrategy).rejections]
    assert chain_of(**{"num-clients": 10, "num-edges": 2}).find(RiskStage) is None
    assert central.get(ValidatingStrategy).max_norm == math.inf


def test_central_dp_is_calibrated_and_accounted_for_the_devices_flower_samples():
    # 0.3 * 10 = 3.0000000000000004: Flower samples 3 devices, so both stages divide by 3
    central = chain_of(**{"central-dp": "server", "num-clients": 10, "fraction-train": 0.3})

    assert central.get(CentralDPAccounting).sampled == 3
    assert central.get(DifferentialPrivacyServerSideFixedClipping).num_sampled_clients == 3
    assert central.get(FedAvg).min_train_nodes == 3


def test_the_ledger_stages_share_the_run_ledger():
    ledger = PrivacyLedger()
    chain = build_chain(RunConfig.from_mapping({"central-dp": "client"}), ledger, 4)

    assert chain.get(PrivacyLedgerStrategy).ledger is ledger
    assert chain.get(PrivacyLedgerStrategy).round_offset == 4
    assert chain.get(CentralDPAccounting).ledger is ledger


def test_a_missing_stage_is_a_clear_error():
    chain = ServerChain.around(FedAvg(), [MeteredStrategy, None])

    assert kinds(chain) == [MeteredStrategy, FedAvg]
    with pytest.raises(LookupError, match=r"no ValidatingStrategy; its stages are "
                                          r"\['MeteredStrategy', 'FedAvg'\]"):
        chain.get(ValidatingStrategy)


def test_secure_aggregation_sits_inside_the_ledger_and_outside_validation():
    from fedmosaic.server.secure_aggregation import SecureAggregationStage

    chain = chain_of(**{"secure-aggregation": True, "num-edges": 2})
    assert kinds(chain)[:-1] == [NodeLossStage, MeteredStrategy, HierarchicalStrategy,
                                 PrivacyLedgerStrategy, SecureAggregationStage,
                                 ValidatingStrategy]
    assert chain.get(HierarchicalStrategy).secure
    # risk perception reads each update, so a secure chain leaves it out
    assert chain_of(**{"secure-aggregation": True}).find(RiskStage) is None
