"""``pyvirtio probe --transport=virtio-msg --socket-path=PATH``: what a virtio-msg bus offers.

Connects as a driver (sharing a small memfd, as every driver does), asks for the bus parameters
(pyvirtio's BUS_INFO), pings, enumerates with GET_DEVICES and, for each device, reads what needs
no claim: GET_DEVICE_INFO, the offered features (by name), the status, each queue's maximum
size (GET_VQUEUE) and the config space, decoded where pyvirtio knows the type.  Nothing is
claimed or changed.
"""

from __future__ import annotations

from ..errors import CliError, VirtioError
from ..spec import virtio_msg as S
from ..spec.ids import DEVICE_NAMES
from ..spec.virtio_msg import MsgId
from ..vhost_user.frontend.identify import decode_config, feature_names, type_name

#: Queues whose maximum size is listed (a device may have hundreds).
PROBE_MAX_QUEUES = 16


def probe(path: str, *, timeout: float = 5.0) -> dict:
    """The bus and its devices, as a JSON-ready dict."""
    from ..virtio_msg import BusClient
    try:
        client = BusClient.connect(path, memory_size=1 << 16, timeout=timeout)
    except FileNotFoundError:
        raise CliError(f"{path}: no such socket") from None
    except ConnectionRefusedError:
        raise CliError(f"{path}: connection refused (nothing serves the bus)") from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    except VirtioError as exc:
        raise CliError(f"{path}: not a virtio-msg bus: {exc}") from None
    try:
        info = client.bus_info()
        return {"socket": path, "revision": info.revision, "max_message_size": info.max_message_size,
                "transport_features": info.transport_features, "ping": client.ping(0x70696E67) == 0x70696E67,
                "devices": [_device(client, n, dev) for n, dev in client.devices()]}
    except VirtioError as exc:
        raise CliError(f"{path}: {exc}") from None
    finally:
        client.close()


def _device(client, n: int, info: S.DeviceInfo) -> dict:
    from ..virtio_msg.protocol import parse, transport_request

    def ask(msg_id, body=None):
        return parse(client.request(transport_request(msg_id, n, body)))
    blocks = max(1, min(info.num_feature_bits // 32, 4))
    words = ask(MsgId.GET_DEVICE_FEATURES, S.FeatureBlocks(0, blocks)).features
    features = sum(w << (32 * i) for i, w in enumerate(words))
    dtype = info.device_id
    queues = min(info.max_virtqueues, PROBE_MAX_QUEUES)
    sizes = [ask(MsgId.GET_VQUEUE, S.QueueIndex(i)).max_size for i in range(queues)]
    room = client.max_message_size - S.HEADER_SIZE - S.CONFIG_DATA.size
    raw = b"".join(ask(MsgId.GET_CONFIG, S.ConfigRange(off, min(room, info.config_size - off))).data
                   for off in range(0, info.config_size, room))
    return {"dev_num": n, "device_type": dtype, "device_type_name": type_name(dtype),
            "device_name": DEVICE_NAMES.get(dtype, ""), "vendor_id": info.vendor_id,
            "num_feature_bits": info.num_feature_bits, "features": features,
            "feature_names": feature_names(features, dtype),
            "status": ask(MsgId.GET_DEVICE_STATUS).status, "queues": info.max_virtqueues,
            "max_queue_sizes": sizes, "config_size": info.config_size, "config_raw": raw.hex(),
            "config": decode_config(dtype, raw, features) if raw else None}


def format_report(r: dict) -> str:
    """The report as a table."""
    lines = [f"virtio-msg bus at {r['socket']}",
             f"  revision {r['revision']}, maximum message size {r['max_message_size']} bytes, "
             f"transport features {r['transport_features']:#x}, ping {'answered' if r['ping'] else 'WRONG'}",
             f"  {len(r['devices'])} device(s)"]
    for d in r["devices"]:
        name = f", {d['device_name']}" if d["device_name"] else ""
        lines.append(f"  device {d['dev_num']}: {d['device_type_name']} ({d['device_type']}){name}, "
                     f"vendor {d['vendor_id']:#x}, status {d['status']:#x}")
        lines.append(f"    features {d['features']:#x}: {'  '.join(d['feature_names'])}")
        sizes = d["max_queue_sizes"]
        lines.append(f"    queues {d['queues']}, max sizes {' '.join(map(str, sizes))}"
                     + (" ..." if len(sizes) < d["queues"] else ""))
        lines.append(f"    config space {d['config_size']} bytes")
        for key, value in (d["config"] or {}).items():
            lines.append(f"      {key:<29}{value}")
    return "\n".join(lines)


__all__ = ["PROBE_MAX_QUEUES", "format_report", "probe"]
