import threading

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedmosaic import records
from fedmosaic.clients.app import app as client_app
from fedmosaic.clients.edge_forward import forward_to_edge
from fedmosaic.compression import arrays_record, decode, payload_from_record
from fedmosaic.compression.spool import SpoolTimeoutError
from fedmosaic.config import RunConfig, default_run_config
from fedmosaic.server.edge import edge_server
from fedmosaic.server.edge.edge_server import expected_devices, serve_edge, wait_for_devices
from fedmosaic.simulation.inprocess import InProcessGrid
from fedmosaic.task import build_model, cached_dataset


def test_devices_per_edge_follow_the_topology():
    # floor(p * 3 / 7) = [0, 0, 0, 1, 1, 2, 2]
    assert [expected_devices(e, 7, 3) for e in range(3)] == [3, 2, 2]


@pytest.mark.parametrize(("mode", "numbers"), [("sync", (1, 2)), ("async", (2, 5, 6))])
def test_an_edge_serves_the_clouds_requests_through_its_spool(tmp_path, monkeypatch, mode,
                                                              numbers):
    spool = tmp_path / "spool"
    config = RunConfig.from_mapping({"num-clients": 4, "num-edges": 2, "num-server-rounds": 2,
                                     "local-epochs": 1, "edge-role": "edge",
                                     "edge-spool": str(spool), "mode": mode})
    # asynchronous: the edge serves until its run is stopped; here, until 3 s without a request
    monkeypatch.setattr(edge_server, "ASYNC_REQUEST_WAIT", 3.0)
    waited = []

    def serve():
        try:
            serve_edge(grid, config)
        except SpoolTimeoutError as error:
            waited.append(error)
    run_config = {**default_run_config(), **config.to_mapping()}
    devices = [{"partition-id": p, "num-partitions": 4, records.EDGE_ID: 0} for p in (0, 1)]
    grid = InProcessGrid(client_app, devices, run_config)
    edge_context = Context(run_id=1, node_id=99, state=RecordDict(), run_config=run_config,
                           node_config={records.EDGE_ID: 0, records.EDGE_SPOOL: str(spool)})
    dataset = cached_dataset(config)
    global_arrays = {k: v.numpy() for k, v in build_model(config, dataset).state_dict().items()}
    served = threading.Thread(target=serve, daemon=True)
    served.start()
    examples = sum(len(dataset.partition(p)[0]) for p in (0, 1))

    replies = []
    for number in numbers:
        # asynchronous: numbered in the run (the others went to other edges), three requests
        # in one version, more than num-server-rounds
        numbered = ({records.SERVER_ROUND: 1, records.EDGE_REQUEST: number} if mode == "async"
                    else {records.SERVER_ROUND: number})
        content = RecordDict({records.ARRAYS: arrays_record(global_arrays),
                              records.CONFIG: ConfigRecord({**numbered,
                                                            records.LEARNING_RATE: 0.003})})
        instruction = Message(content, dst_node_id=99, message_type="train")
        replies.append(forward_to_edge(instruction, edge_context))
    served.join(timeout=30)

    assert not served.is_alive()
    for reply in replies:
        metrics = reply.content[records.METRICS]
        assert metrics[records.NUM_EXAMPLES] == examples
        assert metrics[records.EDGE_ACCEPTED] == 2
        delta = decode(payload_from_record(reply.content[records.COMPRESSED_DELTA]))
        assert list(delta) == list(global_arrays)
        assert any(np.abs(d).max() > 0 for d in delta.values())
    assert all(records.DEVICE_RESIDUAL in c.state for c in grid.contexts.values())
    assert sorted(p.name for p in (spool / "replies").iterdir()) == [
        f"request-{n:04d}" for n in numbers]
    assert len(waited) == (mode == "async")  # it was still waiting for the next request


class Devices:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_a_lost_device_does_not_stall_its_edge_and_an_empty_edge_fails_clearly(fake_clock):
    clock = fake_clock

    nodes = wait_for_devices(Devices([3, 1]), 3, patience=60, timeout=3600, clock=clock,
                             sleep=clock.sleep)
    assert nodes == [1, 3] and clock.now == 60  # went on with the two connected
    assert wait_for_devices(Devices([1, 2, 3]), 3, patience=60, timeout=3600) == [1, 2, 3]
    clock.now = 0.0
    with pytest.raises(TimeoutError, match="none connected"):
        wait_for_devices(Devices([]), 3, patience=60, timeout=3600, clock=clock,
                         sleep=clock.sleep)
    assert clock.now == 3600
