import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients import private_training
from fedmosaic.clients.app import train_locally
from fedmosaic.clients.private_training import (
    client_epsilon_budget,
    prior_segments,
)
from fedmosaic.config import RunConfig
from fedmosaic.privacy.accounting import Segment, least_round_epsilon
from fedmosaic.privacy.budgets import read_budget_file
from fedmosaic.privacy.client_account import ClientPrivacyAccount
from fedmosaic.task import build_model, cached_dataset

RUN_CONFIG = {"local-epochs": 1, "num-clients": 10, "num-server-rounds": 3, "dp": True,
              "dp-epsilon-budget": 3.0}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def context(node_config=None, state=None):
    return Context(run_id=1, node_id=5, node_config={"partition-id": 2, **(node_config or {})},
                   state=state if state is not None else RecordDict(),
                   run_config=RunConfig.from_mapping(RUN_CONFIG).to_mapping())


def global_arrays():
    config = RunConfig.from_mapping(RUN_CONFIG)
    return ArrayRecord(build_model(config, cached_dataset(config)).state_dict())


def message(config):
    content = RecordDict({records.ARRAYS: global_arrays(), records.CONFIG: ConfigRecord(config)})
    return Message(content=content, dst_node_id=5, message_type="train")


def test_dp_round_reports_epsilon_within_budget_and_keeps_the_account():
    ctx = context()

    reply = train_locally(message({records.SERVER_ROUND: 1}), ctx)

    metrics = reply.content[records.METRICS]
    assert metrics[records.DP_REFUSED] == 0
    assert 0.0 < metrics[records.DP_EPSILON_SPENT] <= 3.0
    assert metrics[records.DP_EPSILON_BUDGET] == 3.0
    assert metrics[records.PARTITION_ID] == 2
    assert len(ClientPrivacyAccount.from_record(ctx.state[records.DP_ACCOUNT]).history) == 1


def test_all_planned_rounds_fit_the_budget():
    ctx = context()

    spent = [train_locally(message({records.SERVER_ROUND: r}), ctx)
             .content[records.METRICS][records.DP_EPSILON_SPENT] for r in (1, 2, 3)]

    assert spent[0] < spent[1] < spent[2] <= 3.0
    assert spent[2] >= 3.0 - 0.01


def test_a_client_with_an_exhausted_budget_never_trains(monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("a client over its budget trained")

    monkeypatch.setattr(private_training, "train_private", must_not_train)
    spent = ClientPrivacyAccount(history=[Segment(0.6, 1.0, 50)], epsilon_budget=3.0,
                                 noise_multiplier=0.6)
    ctx = context(state=RecordDict({records.DP_ACCOUNT: spent.to_record()}))

    for server_round in (2, 3):
        reply = train_locally(message({records.SERVER_ROUND: server_round}), ctx)

        metrics = reply.content[records.METRICS]
        assert metrics[records.DP_REFUSED] == 1
        assert metrics[records.NUM_EXAMPLES] == 0
        assert metrics[records.DP_EPSILON_SPENT] > 3.0
        sent = global_arrays().to_torch_state_dict()
        got = reply.content[records.ARRAYS].to_torch_state_dict()
        assert all(torch.equal(got[k], sent[k]) for k in sent)


def test_a_lowered_budget_below_the_spend_is_refused():
    ctx = context()
    train_locally(message({records.SERVER_ROUND: 1}), ctx)
    spent = ctx.state[records.DP_ACCOUNT]

    reply = train_locally(message({records.SERVER_ROUND: 2, records.DP_EPSILON_BUDGET: 0.01}),
                          ctx)

    assert reply.content[records.METRICS][records.DP_REFUSED] == 1
    assert list(ctx.state[records.DP_ACCOUNT]["steps"]) == list(spent["steps"])


def test_a_restarted_device_remembers_its_spend_from_the_state_dir(tmp_path):
    first = context({"state-dir": str(tmp_path)})
    spent_before = train_locally(message({records.SERVER_ROUND: 1}), first) \
        .content[records.METRICS][records.DP_EPSILON_SPENT]

    restarted = context({"state-dir": str(tmp_path)})  # fresh, empty context.state
    reply = train_locally(message({records.SERVER_ROUND: 2}), restarted)

    account = ClientPrivacyAccount.from_record(restarted.state[records.DP_ACCOUNT])
    assert len(account.history) == 2
    assert reply.content[records.METRICS][records.DP_EPSILON_SPENT] > spent_before


def test_segments_from_a_restarted_server_count_against_the_budget():
    prior_key = f"{records.DP_PRIOR_PREFIX}2"

    small = train_locally(message({records.SERVER_ROUND: 2, prior_key: [3.0, 0.2, 5.0]}),
                          context()).content[records.METRICS]
    fresh = train_locally(message({records.SERVER_ROUND: 2}), context()).content[records.METRICS]
    spent = train_locally(message({records.SERVER_ROUND: 2, prior_key: [0.6, 1.0, 50.0]}),
                          context()).content[records.METRICS]

    assert small[records.DP_REFUSED] == 0 and fresh[records.DP_REFUSED] == 0
    assert small[records.DP_NOISE_MULTIPLIER] > fresh[records.DP_NOISE_MULTIPLIER]
    assert spent[records.DP_REFUSED] == 1


def test_malformed_prior_segments_are_rejected():
    with pytest.raises(ValueError, match="triples"):
        prior_segments([1.0, 0.2])


def test_budget_precedence(tmp_path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("2 = 5.0\n3 = 7.0\n")
    config = RunConfig.from_mapping({**RUN_CONFIG, "privacy-budgets": str(budgets)})

    assert client_epsilon_budget(config, {}, 2, {records.DP_EPSILON_BUDGET: 1.5}) == 1.5
    assert client_epsilon_budget(config, {"dp-epsilon-budget": 2.5}, 2, {}) == 2.5
    assert client_epsilon_budget(config, {}, 2, {}) == 5.0
    assert client_epsilon_budget(config, {}, 4, {}) == 3.0


@pytest.mark.parametrize("text, message", [
    ("device = 1.0\n", "partition ids"),
    ("0 = -1.0\n", "finite epsilon"),
    ('0 = "eight"\n', "finite epsilon"),
])
def test_bad_budget_files_are_rejected(tmp_path, text, message):
    path = tmp_path / f"budgets-{abs(hash(text))}.toml"
    path.write_text(text)

    with pytest.raises(ValueError, match=message):
        read_budget_file(str(path))


def test_a_bad_budget_from_the_server_is_rejected():
    config = RunConfig.from_mapping(RUN_CONFIG)

    with pytest.raises(ValueError, match="training config"):
        client_epsilon_budget(config, {}, 0, {records.DP_EPSILON_BUDGET: 0.0})


CONTROLLED = {**RUN_CONFIG, "controller": "static", "dp-epsilon-budget": 1.0}


def controlled_context():
    return Context(run_id=1, node_id=5, node_config={"partition-id": 2}, state=RecordDict(),
                   run_config=RunConfig.from_mapping(CONTROLLED).to_mapping())


def test_a_controller_share_is_spent_above_the_cheapest_round_and_within_the_cap():
    ctx = controlled_context()
    spent = []
    for server_round, share in ((1, 0.02), (2, 0.5), (3, 1.0)):
        reply = train_locally(message({records.SERVER_ROUND: server_round,
                                       records.DP_SPEND_SHARE: share}), ctx)
        metrics = reply.content[records.METRICS]
        assert metrics[records.DP_REFUSED] == 0  # even 2 % of a cap of 1 trains
        spent.append(metrics[records.DP_EPSILON_SPENT])
    history = ClientPrivacyAccount.from_record(ctx.state[records.DP_ACCOUNT]).history
    rate, steps = history[0].sample_rate, history[0].steps
    for index, share in enumerate((0.02, 0.5, 1.0)):  # each round hits its target to 1 %
        least = least_round_epsilon(history[:index], rate, steps, 1e-5, "filter")
        target = least + share * (1.0 - least)
        assert target - 0.01 * (target - least) - 1e-9 <= spent[index] <= target + 1e-9
    assert spent[-1] == pytest.approx(1.0, abs=0.01) and spent[-1] <= 1.0


def test_a_malformed_share_is_a_clear_error():
    with pytest.raises(ValueError, match="dp-spend-share must be a number in"):
        private_training.spend_share(1.5)
