"""``pyvirtio serve net`` options: add_arguments / build_device."""

import argparse

import pytest

from pyvirtio.commands import serve_net
from pyvirtio.devices.net import NetDevice
from pyvirtio.errors import UsageError
from pyvirtio.net.null import NullBackend
from pyvirtio.net.stream import StreamBackend
from pyvirtio.net.switch import SwitchPort
from pyvirtio.spec import net as spec


@pytest.fixture
def build():
    made = []

    def _build(*argv):
        parser = argparse.ArgumentParser()
        serve_net.add_arguments(parser)
        device = serve_net.build_device(parser.parse_args(argv))
        made.append(device)
        return device

    yield _build
    for device in made:
        device.close()


def test_null_with_settings(build):
    dev = build("--null", "--mac", "52:54:00:12:34:56", "--mtu", "9000", "--queue-pairs", "2",
                "--queue-size", "128", "--link-down")
    assert isinstance(dev, NetDevice) and isinstance(dev.backend, NullBackend)
    assert dev.mac == bytes.fromhex("525400123456") and dev.mtu == 9000 and dev.max_pairs == 2
    assert dev.queues[0].max_size == 128 and not dev.link_up
    assert dev.device_features & (1 << spec.NetFeature.MQ)


def test_rings_up_to_qemus_largest_by_default(build):
    """QEMU's virtio-net takes tx_queue_size/rx_queue_size up to 1024 with a vhost-user
    back-end; the default must accept what it may set."""
    dev = build("--null")
    assert all(q.max_size == 1024 for q in dev.queues)
    dev.queues[1].set_size(1024)


def test_switch_ports_share_a_switch(build):
    a, b = build("--switch", "lan0"), build("--switch", "lan0")
    assert isinstance(a.backend, SwitchPort) and a.backend.switch is b.backend.switch


def test_socket_server_and_client(build, tmp_path):
    path = str(tmp_path / "s.sock")
    server = build("--socket", path, "--socket-listen")
    client = build("--socket", path)
    assert isinstance(server.backend, StreamBackend) and client.backend.link_up


@pytest.mark.parametrize("argv", [(), ("--null", "--switch", "x"), ("--null", "--mac", "nope"),
                                  ("--null", "--socket-listen"), ("--null", "--mtu", "10"),
                                  ("--null", "--queue-pairs", "0"), ("--switch", "x", "--tap-netns", "n")])
def test_bad_options_are_usage_errors(build, argv):
    with pytest.raises(UsageError):
        build(*argv)


def test_socket_that_cannot_connect_is_an_os_error(build, tmp_path):
    with pytest.raises(OSError):
        build("--socket", str(tmp_path / "nobody-listens.sock"))
