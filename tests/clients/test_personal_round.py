"""Personalization on the device: what stays, what is sent, what comes back."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmosaic import records
from fedmosaic.clients import round as device_round
from fedmosaic.clients.app import evaluate_locally, train_locally
from fedmosaic.clients.device_state import PersonalStore
from fedmosaic.clients.round import TRAIN_STAGES, DeviceRound, run_train_round
from fedmosaic.compression import decode, payload_from_record
from fedmosaic.config import RunConfig
from fedmosaic.models.personalization import personal_keys
from fedmosaic.task import build_model, cached_dataset

BASE = {"dataset": "synthetic", "num-clients": 3, "samples-per-client": 40, "local-epochs": 1}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def run_config(personalization, **extra):
    return RunConfig.from_mapping({**BASE, "personalization": personalization, **extra})


def device(config, node_config=None):
    return Context(run_id=1, node_id=5, node_config={records.PARTITION_ID: 1,
                                                     **(node_config or {})},
                   state=RecordDict(), run_config=config.to_mapping())


def global_state(config, seed_offset=0):
    torch.manual_seed(100 + seed_offset)
    model = build_model(config, cached_dataset(config))
    if seed_offset:  # a later round's global model: every weight moved
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn_like(param))
    return model.state_dict()


def train_message(state, server_round=1):
    return Message(content=RecordDict({
        records.ARRAYS: ArrayRecord(state),
        records.CONFIG: ConfigRecord({records.SERVER_ROUND: server_round})}),
        dst_node_id=5, message_type="train")


@pytest.mark.parametrize("personalization", ["fedbn", "fedrep", "local-gate"])
def test_personal_parameters_never_leave_the_device(personalization):
    config = run_config(personalization)
    context, sent = device(config), global_state(config)

    reply = train_locally(train_message(sent), context)

    got = reply.content[records.ARRAYS].to_torch_state_dict()
    kept = PersonalStore(config, context, 1).load()
    keys = personal_keys(build_model(config, cached_dataset(config)), personalization)
    assert keys and set(kept) == keys
    for key in keys:  # the reply carries exactly what the device received...
        assert torch.equal(got[key], sent[key])
    # ...while the device trained its own values (fedbn's GroupNorm, fedrep's head, the gates)
    assert any(not torch.equal(kept[key], sent[key]) for key in keys)
    shared = [key for key in sent if key not in keys and sent[key].is_floating_point()]
    assert any(not torch.equal(got[key], sent[key]) for key in shared)


def test_a_rejoining_device_gets_its_personal_layers_back_from_its_state_dir(tmp_path):
    config = run_config("fedrep")
    first = device(config, {records.STATE_DIR: str(tmp_path)})
    train_locally(train_message(global_state(config)), first)
    kept = PersonalStore(config, first, 1).load()

    restarted = device(config, {records.STATE_DIR: str(tmp_path)})  # empty context.state
    later = global_state(config, seed_offset=1)
    restored = PersonalStore(config, restarted, 1).load()
    assert restored is not None and all(torch.equal(restored[k], kept[k]) for k in kept)

    model = build_model(config, cached_dataset(config))
    model.load_state_dict(later)
    PersonalStore(config, restarted, 1).apply(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, kept[key] if key in kept else later[key])


def test_the_next_round_starts_from_the_personal_head_and_the_new_global_body():
    config = run_config("fedrep")
    context = device(config)
    train_locally(train_message(global_state(config)), context)
    head = PersonalStore(config, context, 1).load()
    later = global_state(config, seed_offset=1)
    seen = {}

    def inspect(state: DeviceRound) -> None:
        seen.update({k: v.clone() for k, v in state.model.state_dict().items()})

    at = TRAIN_STAGES.index(device_round.prepare_model) + 1
    run_train_round(train_message(later, server_round=2), context,
                    (*TRAIN_STAGES[:at], inspect, *TRAIN_STAGES[at:]))

    for key, value in seen.items():
        assert torch.equal(value, head[key] if key in head else later[key])


def test_ditto_keeps_a_whole_personal_model_and_sends_the_global_update():
    config = run_config("ditto", **{"ditto-lambda": 0.5})
    context, sent = device(config), global_state(config)

    reply = train_locally(train_message(sent), context)

    got = reply.content[records.ARRAYS].to_torch_state_dict()
    personal = PersonalStore(config, context, 1).load()
    assert set(personal) == set(sent)
    assert any(not torch.equal(personal[k], got[k]) for k in sent)  # two different models


def test_evaluation_predicts_with_the_personal_parameters():
    config = run_config("fedrep")
    context, sent = device(config), global_state(config)
    num_classes = cached_dataset(config).num_classes
    _, test = cached_dataset(config).partition(1)
    # a head that always says class 0 (bias far above any logit)
    head = {"classifier.2.bias": torch.tensor([1e6] + [0.0] * (num_classes - 1)),
            "classifier.2.weight": torch.zeros_like(sent["classifier.2.weight"])}
    PersonalStore(config, context, 1).save(head)
    evaluate = Message(content=RecordDict({records.ARRAYS: ArrayRecord(sent)}),
                       dst_node_id=5, message_type="evaluate")

    reply = evaluate_locally(evaluate, context)

    metrics = reply.content[records.METRICS]
    always_zero = pytest.approx(float((test.labels == 0).mean()))
    assert metrics[records.EVAL_ACCURACY] == always_zero
    removals = [records.eval_without(spec.name) for spec in cached_dataset(config).specs]
    checked = [(metrics[with_], metrics[without]) for samples, with_, without in removals
               if metrics[samples]]
    assert checked and all(a == b for a, b in checked)  # with or without it: the same head


def test_modality_dropout_and_personalization_compose_with_dp():
    config = run_config("fedrep", dp=True, **{"modality-dropout": 0.5})
    context, sent = device(config), global_state(config)
    ran = [stage.__name__ for stage in TRAIN_STAGES]
    heads = []

    def no_plain_head_fit(state: DeviceRound) -> None:  # under DP the head trains in DP-SGD
        heads.append(state.model.state_dict()["classifier.2.weight"].clone())

    at = ran.index("fit_personal_head") + 1
    reply = run_train_round(train_message(sent), context,
                            (*TRAIN_STAGES[:at], no_plain_head_fit, *TRAIN_STAGES[at:]))

    assert torch.equal(heads[0], sent["classifier.2.weight"])
    assert not torch.equal(PersonalStore(config, context, 1).load()["classifier.2.weight"],
                           sent["classifier.2.weight"])  # trained, by DP-SGD
    metrics = reply.content[records.METRICS]
    assert metrics[records.DP_REFUSED] == 0 and metrics[records.DP_STEPS] > 0
    got = reply.content[records.ARRAYS].to_torch_state_dict()
    assert all(torch.equal(got[k], sent[k]) for k in sent if k.startswith("classifier."))


def test_below_an_edge_the_compressed_delta_of_personal_keys_is_zero():
    config = run_config("fedrep", **{"num-edges": 1, "device-topk": 0.1, "device-bits": 8})
    context, sent = device(config), global_state(config)

    reply = train_locally(train_message(sent), context)

    delta = decode(payload_from_record(reply.content[records.COMPRESSED_DELTA]))
    assert all(not delta[k].any() for k in sent if k.startswith("classifier."))
    assert any(delta[k].any() for k in sent if k.startswith("encoders."))
    residual = context.state[records.DEVICE_RESIDUAL]  # nothing personal kept for later either
    assert all(not residual[k].numpy().any() for k in sent if k.startswith("classifier."))


@pytest.mark.parametrize("dp", [False, True])
@pytest.mark.parametrize(("fine_tune", "frozen"), [
    ("top", ("encoders.",)), ("head", ("encoders.", "heads.", "fusion."))])
def test_fine_tuning_leaves_the_frozen_parts_as_sent(dp, fine_tune, frozen):
    config = run_config("none", dp=dp, **{"fine-tune": fine_tune})
    context, sent = device(config), global_state(config)

    reply = train_locally(train_message(sent), context)

    got = reply.content[records.ARRAYS].to_torch_state_dict()
    assert all(torch.equal(got[k], sent[k]) for k in sent if k.startswith(frozen))
    assert any(not torch.equal(got[k], sent[k]) for k in sent if k.startswith("classifier."))
