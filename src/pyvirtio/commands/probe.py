"""``pyvirtio probe --socket-path=PATH``: say what a vhost-user back-end is.

Connects as a front-end, negotiates protocol features and becomes the owner (as QEMU does), then
reports without starting any ring: the device type (given, or guessed — see
:mod:`pyvirtio.vhost_user.frontend.identify`), the virtio and protocol features by name, the queue count,
the largest queue size each ring accepts (probed with SET_VRING_NUM, only with REPLY_ACK), the
memory slots, and the config space decoded field by field.  ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import json

from ..errors import CliUsageError
from ..spec.ids import DEVICE_NAMES
from .values import positive_seconds, socket_path

#: Queue sizes are probed up to the split-ring maximum (VIRTIO 1.3, 2.7).
PROBE_MAX_QUEUE_SIZE = 32768
#: Probe the sizes of at most this many rings (a net back-end may offer hundreds).
PROBE_MAX_RINGS = 16


def add_socket_args(p, *, type_help: str, timeout: float = 5.0, required: bool = True) -> None:
    """The flags every vhost-user front-end command shares."""
    p.add_argument("--socket-path", metavar="PATH", required=required, type=socket_path,
                   help="the back-end's vhost-user UNIX socket")
    p.add_argument("--type", metavar="TYPE", dest="device_type",
                   help=type_help + " (blk, rng, net, fs, console, vsock, gpio, scsi, … or a "
                        "device ID); vhost-user does not say, so without it the type is guessed")
    p.add_argument("--timeout", type=positive_seconds, default=timeout, metavar="SECONDS",
                   help="how long to wait for each answer (and each request the device serves) "
                        f"before calling the back-end hung (default {timeout:g})")


def device_type_arg(args) -> int | None:
    if not args.device_type:
        return None
    from ..vhost_user.frontend.identify import parse_type

    try:
        return int(parse_type(args.device_type))
    except ValueError as exc:
        raise CliUsageError(f"--type: {exc}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "probe", help="connect to a vhost-user back-end and print what it is",
        description="Connect to any vhost-user back-end as a front-end and print its device "
                    "type, virtio and protocol features by name, queue count and maximum queue "
                    "sizes, memory slots and decoded config space.  No ring is started and no "
                    "request is sent to the device.")
    add_socket_args(p, type_help="the device type to decode features and config as")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--transport", choices=("vhost-user", "virtio-msg"), default="vhost-user",
                   help="what serves the socket: a vhost-user back-end (the default) or a "
                        "virtio-msg bus, whose devices are listed")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.transport == "virtio-msg":
        from . import probe_virtio_msg
        bus = probe_virtio_msg.probe(args.socket_path, timeout=args.timeout)
        print(json.dumps(bus, indent=2) if args.json else probe_virtio_msg.format_report(bus))
        return 0
    report = probe(args.socket_path, device_type_arg(args), timeout=args.timeout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def probe(path: str, device_type: int | None = None, *, timeout: float = 5.0) -> dict:
    """Everything the probe learns, as a JSON-ready dict."""
    from ..vhost_user.frontend.identify import feature_names, protocol_feature_names, type_name
    from ..vhost_user.frontend.transport import VhostUserTransport

    t = VhostUserTransport(path, device_type=device_type, memory_size=1 << 20,
                           max_queue_size=PROBE_MAX_QUEUE_SIZE, timeout=timeout)
    try:
        conn = t.conn
        dtype = t.device_type or None
        features = conn.backend_features or 0
        offered_pf = conn.backend_protocol_features
        report = {
            "socket": path,
            "device_type": dtype,
            "device_type_name": type_name(dtype),
            "device_name": DEVICE_NAMES.get(dtype, "") if dtype else "",
            "device_type_source": t.device_type_reason,
            "features": features,
            "feature_names": feature_names(features, dtype),
            "protocol_features_offered": offered_pf,
            "protocol_feature_names": protocol_feature_names(offered_pf or 0),
            "protocol_features_negotiated": conn.protocol_features,
            "queues": t.num_queues(),
            "queues_source": "GET_QUEUE_NUM" if conn.queue_num is not None else "the device type's fixed count",
            "max_mem_slots": conn.max_mem_slots,
        }
        report.update(_queue_sizes(t))
        report.update(_config(t, dtype, features))
        return report
    finally:
        t.close()


def _queue_sizes(t) -> dict:
    from ..vhost_user.protocol import ProtocolFeature as PF

    if not t.conn.has_protocol_feature(PF.REPLY_ACK):
        return {"max_queue_sizes": None,
                "max_queue_sizes_note": "unknown: without REPLY_ACK a refused SET_VRING_NUM is silent"}
    n = min(t.num_queues(), PROBE_MAX_RINGS)
    sizes = [t.queue_max_size(i) for i in range(n)]
    note = "largest power of two <= 32768 that SET_VRING_NUM accepts"
    if n < t.num_queues():
        note += f" (first {n} rings)"
    return {"max_queue_sizes": sizes, "max_queue_sizes_note": note}


def _config(t, dtype, features) -> dict:
    from ..vhost_user.frontend.identify import decode_config
    from ..vhost_user.protocol import ProtocolFeature as PF

    if not t.conn.has_protocol_feature(PF.CONFIG):
        return {"config_size": None, "config": None,
                "config_note": "the back-end does not offer the CONFIG protocol feature"}
    size = t.config_size()
    raw = t.read_config(0, size) if size else b""
    note = ("it answers every read up to 256 bytes, so its real size is unknown"
            if size >= 256 else "the longest read from offset 0 the back-end answers")
    return {"config_size": size, "config_raw": raw.hex(), "config_note": note,
            "config": decode_config(dtype, raw, features) if dtype else None}


def format_report(r: dict) -> str:
    lines = [f"vhost-user back-end at {r['socket']}"]

    def row(label: str, value) -> None:
        lines.append(f"  {label:<19}{value}")

    dtype = r["device_type"]
    row("device type", f"{r['device_type_name']} ({dtype})" + (f", {r['device_name']}" if r["device_name"] else "")
        if dtype else "unknown")
    row("", r["device_type_source"])
    row("features", f"{r['features']:#x}")
    _names(lines, r["feature_names"])
    if r["protocol_features_offered"] is None:
        row("protocol features", "none (VHOST_USER_F_PROTOCOL_FEATURES not offered)")
    else:
        row("protocol features", f"{r['protocol_features_offered']:#x} offered, "
                                 f"{r['protocol_features_negotiated']:#x} negotiated")
        _names(lines, r["protocol_feature_names"])
    row("queues", f"{r['queues']} ({r['queues_source']})")
    if r["device_type"] == 1 and r["queues_source"] == "GET_QUEUE_NUM":
        row("", "(QEMU reads a net back-end's GET_QUEUE_NUM as queue pairs)")
    sizes = r["max_queue_sizes"]
    if sizes is None:
        row("max queue size", r["max_queue_sizes_note"])
    else:
        same = len(set(sizes)) == 1
        text = (f"{sizes[0]} on all {len(sizes)} rings probed" if same and len(sizes) > 1 else
                " ".join(f"q{i}={s}" for i, s in enumerate(sizes)))
        row("max queue size", text)
        row("", f"({r['max_queue_sizes_note']})")
    row("memory slots", "8 (SET_MEM_TABLE; no CONFIGURE_MEM_SLOTS)" if r["max_mem_slots"] is None
        else f"{r['max_mem_slots']} (GET_MAX_MEM_SLOTS)")
    if r["config_size"] is None:
        row("config space", f"none: {r['config_note']}")
        return "\n".join(lines)
    row("config space", f"{r['config_size']} bytes ({r['config_note']})")
    config = r["config"]
    if config:
        for name, value in config.items():
            lines.append(f"    {name:<31}{_value(name, value)}")
    elif r["config_raw"]:
        raw = bytes.fromhex(r["config_raw"])
        shown = raw.rstrip(b"\0")
        lines.append(f"    raw {shown[:64].hex(' ')}" + (" …" if len(shown) > 64 else "")
                     + (f" (then zeros to byte {len(raw)})" if len(shown) < len(raw) else "")
                     if shown else f"    all {len(raw)} bytes are zero")
    return "\n".join(lines)


def _names(lines: list[str], names: list[str], width: int = 96) -> None:
    line = "    "
    for name in names:
        if len(line) + len(name) > width and line.strip():
            lines.append(line.rstrip())
            line = "    "
        line += name + "  "
    if line.strip():
        lines.append(line.rstrip())


def _value(name: str, value) -> str:
    if name == "capacity" and isinstance(value, int):
        return f"{value} sectors ({_size(value * 512)})"
    if name in ("size_max", "blk_size", "opt_io_size") and isinstance(value, int) and value:
        return f"{value} ({_size(value)})"
    return str(value)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


__all__ = ["register", "run", "probe", "format_report", "add_socket_args", "device_type_arg"]
