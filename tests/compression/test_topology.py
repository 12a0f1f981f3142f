import pytest

from fedmosaic import records
from fedmosaic.compression.topology import device_edge, edge_of


def test_ten_devices_on_two_edges_split_into_contiguous_halves():
    assert [edge_of(p, 10, 2) for p in range(10)] == [0] * 5 + [1] * 5


def test_uneven_split_differs_by_at_most_one_device():
    # floor(p * 3 / 7) for p = 0..6
    assert [edge_of(p, 7, 3) for p in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def test_as_many_edges_as_devices_gives_each_device_its_own_edge():
    assert [edge_of(p, 4, 4) for p in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("partition_id", "num_clients", "num_edges", "message"), [
    (0, 0, 1, "num_clients must be >= 1"),
    (0, 4, 0, r"num_edges must lie in \[1, num_clients=4\]"),
    (0, 4, 5, r"num_edges must lie in \[1, num_clients=4\]"),
    (-1, 4, 2, r"partition_id must lie in \[0, num_clients=4\)"),
    (4, 4, 2, r"partition_id must lie in \[0, num_clients=4\)"),
])
def test_out_of_range_arguments_are_rejected(partition_id, num_clients, num_edges, message):
    with pytest.raises(ValueError, match=message):
        edge_of(partition_id, num_clients, num_edges)


def test_node_config_edge_id_wins_over_the_computed_assignment():
    assert device_edge({"partition-id": 0, records.EDGE_ID: 1}, 10, 2) == 1


def test_without_edge_id_the_partition_decides():
    assert device_edge({"partition-id": 7}, 10, 2) == 1


@pytest.mark.parametrize(("node_config", "message"), [
    ({records.EDGE_ID: 2}, r"edge-id=2 must lie in \[0, num-edges=2\)"),
    ({records.EDGE_ID: -1}, r"edge-id=-1 must lie in \[0, num-edges=2\)"),
    ({"other": 1}, "needs 'edge-id' or 'partition-id'"),
])
def test_bad_node_configs_are_rejected(node_config, message):
    with pytest.raises(ValueError, match=message):
        device_edge(node_config, 10, 2)
