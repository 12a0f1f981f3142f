"""Deployment credentials: what ``fedmosaic credentials`` writes, and what a SuperLink refuses."""

import ipaddress
import json
import stat
import subprocess
import time

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key

from fedmosaic.launch.credentials import Credentials, create_credentials
from fedmosaic.launch.flower_commands import (
    free_port,
    register_supernodes,
    superlink_command,
    superlink_settings,
    supernode_command,
    wait_for_port,
)
from fedmosaic.launch.processes import ProcessGroup
from fedmosaic.launch.runs import RunFailedError, flower_environment


def _certificate(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_superlink_certificate_is_signed_by_the_ca_for_its_hosts(tmp_path):
    made = create_credentials(tmp_path / "c", devices=2, edges=2, cloud_hosts=["cloud.example",
                                                                               "10.0.0.5"],
                              edge_hosts=["edge0.example", "10.0.1.7"])

    ca = _certificate(made.ca_certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    loopback = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    hosts = {"cloud": ({"cloud.example"}, {ipaddress.ip_address("10.0.0.5")}),
             "edge-0": ({"edge0.example"}, set()),
             "edge-1": (set(), {ipaddress.ip_address("10.0.1.7")})}
    ca_key_id = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for name, (names, addresses) in hosts.items():
        certificate = _certificate(made.superlink(name)[0])
        certificate.verify_directly_issued_by(ca)
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # the named hosts, and loopback, where the SuperLink's own ServerApp runner dials it
        assert set(sans.get_values_for_type(x509.DNSName)) == names | {"localhost"}
        assert set(sans.get_values_for_type(x509.IPAddress)) == addresses | loopback
        assert isinstance(certificate.public_key().curve, ec.SECP384R1)
        authority = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value  # strict verifiers (Python >= 3.13) need it
        assert authority.key_identifier == ca_key_id


def test_supernode_keys_are_p384_openssh_pairs_that_flower_accepts_and_stay_private(tmp_path):
    made = create_credentials(tmp_path / "c", devices=3, edges=1)

    names = ["device-0", "device-1", "device-2", "edge-0"]
    publics = {try_load_public_key(made.supernode(name)[1]) for name in names}
    assert len(publics) == len(names)  # one key per SuperNode
    private_files = [made.folder / "ca.key", made.superlink("cloud")[1],
                     *(made.supernode(name)[0] for name in names)]
    for path in private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_bad_requests_are_refused_with_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="one --edge-host per edge: 2 edge"):
        create_credentials(tmp_path / "c", devices=1, edges=2, edge_hosts=["only-one"])
    made = create_credentials(tmp_path / "d", devices=1)
    with pytest.raises(FileNotFoundError, match="device-4.*fedmosaic credentials"):
        Credentials(made.folder).check(superlinks=["cloud"], supernodes=["device-4"])


def test_a_tls_superlink_serves_only_registered_supernodes_that_speak_tls(tmp_path):
    # made for a real host: loopback clients still verify it (its SANs include loopback)
    made = create_credentials(tmp_path / "c", devices=2, cloud_hosts=["cloud.example"])
    env = flower_environment(tmp_path)
    home = tmp_path / ".flwr"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": "link", "link": superlink_settings(port, made)}}))
    logs = tmp_path / "logs"

    def supernode(partition_id, credentials):
        command = supernode_command(port, free_port(), partition_id, 2, credentials=credentials)
        return command[:1] + ["--max-retries", "2"] + command[1:]

    with ProcessGroup(env=env) as group:
        link = group.start(superlink_command(port, made), logs / "superlink.log")
        wait_for_port(port, 60, lambda: link.poll() is None)
        register_supernodes([made.supernode("device-0")[1]], "link", group.env)
        with pytest.raises(RunFailedError, match="does not exist"):
            register_supernodes([tmp_path / "missing.pub"], "link", group.env)

        registered = group.start(supernode(0, made), logs / "registered.log")
        unregistered = group.start(supernode(1, made), logs / "unregistered.log")
        plain = group.start(supernode(1, None), logs / "plain.log")
        assert unregistered.wait(timeout=120) != 0
        assert plain.wait(timeout=120) != 0
        deadline = time.monotonic() + 60
        while True:
            listing = subprocess.run(["flwr", "supernode", "ls", "link", "--format", "json"],
                                     capture_output=True, text=True, env=group.env,
                                     timeout=60)
            nodes = json.loads(listing.stdout)["nodes"]
            if [n["status"] for n in nodes] == ["online"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert registered.poll() is None
        assert [n["status"] for n in nodes] == ["online"]  # the unregistered key never joined

    assert "Failed to activate SuperNode" in (logs / "unregistered.log").read_text()
    assert "Exit Code: 305" in (logs / "plain.log").read_text()
