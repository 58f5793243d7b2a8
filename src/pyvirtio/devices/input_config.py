"""What an input device is (VIRTIO 1.3, 5.8.4): its name, serial, IDs, properties, the event
codes it sends and its absolute axes — and the config space that answers the driver's selects.

:class:`InputProfile` is the description, checked once when it is made (:meth:`InputProfile.check`
raises :class:`~pyvirtio.errors.UsageError`); :func:`profile` builds the stock kinds (keyboard,
mouse, tablet, multitouch).  :func:`answer` is the whole config-space rule: for one
(select, subsel) it returns the bytes of the union ``u``, and ``size`` is their length — zero for
every combination the device does not support (5.8.5.2: "A device MUST set the size field to
zero if it doesn't support a given select and subsel combination").  Sans-I/O, no state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import UsageError
from ..spec import evdev
from ..spec.evdev import Abs, EventType, InputProp, Led, Rel, Rep
from ..spec.input import (INPUT_ABSINFO, INPUT_CONFIG, INPUT_CONFIG_U_SIZE, INPUT_DEVIDS,
                          InputAbsInfo, InputConfigSelect)

_S = InputConfigSelect
_I32 = (-(1 << 31), (1 << 31) - 1)
KINDS = ("keyboard", "mouse", "tablet", "multitouch")
#: The axes' range of the stock tablet and touch screen (QEMU's virtio-tablet uses the same).
ABS_RANGE = 0x7FFF
#: Events waiting for the guest at most (8 bytes each); older whole reports are dropped past it.
MAX_PENDING_EVENTS = 1024
#: Touch points the stock multitouch device tracks at once (ABS_MT_SLOT 0..MT_SLOTS-1).
MT_SLOTS = 10
#: The vendor in the stock devices' ID_DEVIDS (the virtio PCI vendor); products follow KINDS.
VENDOR = 0x1AF4
PRODUCT_BASE = 0x1100


#: An axis's range (struct virtio_input_absinfo): AbsInfo(min, max, fuzz=0, flat=0, res=0).
AbsInfo = InputAbsInfo


@dataclass(frozen=True)
class InputProfile:
    """An input device's identity and capabilities: every answer its config space gives."""

    kind: str
    name: str
    serial: str = ""
    #: (bustype, vendor, product, version) for ID_DEVIDS.
    devids: tuple[int, int, int, int] = (evdev.BUS_VIRTUAL, VENDOR, PRODUCT_BASE, 1)
    props: frozenset[int] = frozenset()
    #: Event type -> the codes of that type the device sends (or, for EV_LED/EV_SND, takes).
    events: Mapping[int, frozenset[int]] = field(default_factory=dict)
    #: Axis -> its range, for every EV_ABS code.
    abs_info: Mapping[int, AbsInfo] = field(default_factory=dict)

    def check(self) -> "InputProfile":
        """Raise UsageError unless every answer fits its field of the config space."""
        for what, text in (("name", self.name), ("serial", self.serial)):
            raw = text.encode()
            if len(raw) > INPUT_CONFIG_U_SIZE or b"\0" in raw:
                raise UsageError(f"input {what} {text!r}: at most {INPUT_CONFIG_U_SIZE} UTF-8 "
                                 "bytes, no NUL")
        if len(self.devids) != 4 or not all(0 <= v <= 0xFFFF for v in self.devids):
            raise UsageError(f"input devids {self.devids!r}: four numbers 0..0xffff")
        _check_codes("property", self.props, evdev.INPUT_PROP_MAX)
        for etype, codes in self.events.items():
            if not 0 < etype <= evdev.EV_MAX:
                raise UsageError(f"event type {etype}: not 1..{evdev.EV_MAX:#x}")
            _check_codes(f"type {etype:#x} code", codes, evdev.CODE_MAX.get(etype, 8 * INPUT_CONFIG_U_SIZE - 1))
        axes = self.events.get(EventType.ABS, frozenset())
        if set(self.abs_info) != set(axes):
            raise UsageError(f"every EV_ABS axis needs its AbsInfo and no other: axes {sorted(axes)}, "
                             f"infos {sorted(self.abs_info)}")
        for axis, info in self.abs_info.items():
            if not all(_I32[0] <= v <= _I32[1] for v in (info.min, info.max, info.fuzz, info.flat, info.res)):
                raise UsageError(f"axis {axis:#x}: AbsInfo values must fit 32 signed bits")
            if info.min > info.max:
                raise UsageError(f"axis {axis:#x}: min {info.min} above max {info.max}")
        return self

    def supports(self, etype: int, code: int) -> bool:
        return code in self.events.get(etype, ())


def _check_codes(what: str, codes, highest: int) -> None:
    highest = min(highest, 8 * INPUT_CONFIG_U_SIZE - 1)  # the bitmap has 128 bytes
    for code in codes:
        if not 0 <= code <= highest:
            raise UsageError(f"{what} {code}: not 0..{highest:#x}")


def bitmap(codes) -> bytes:
    """The config bitmap of ``codes``: byte n carries codes 8n..8n+7, as long as the highest
    code needs (5.8.4, and Linux's virtinput_cfg_bits); empty for no codes."""
    if not codes:
        return b""
    out = bytearray(max(codes) // 8 + 1)
    for code in codes:
        out[code // 8] |= 1 << (code % 8)
    return bytes(out)


def answer(p: InputProfile, select: int, subsel: int) -> bytes:
    """The union ``u`` for (select, subsel); its length is ``size``; b"" when unsupported."""
    if select in (_S.ID_NAME, _S.ID_SERIAL, _S.ID_DEVIDS, _S.PROP_BITS) and subsel != 0:
        return b""  # 5.8.4: subsel is zero for these
    if select == _S.ID_NAME:
        return p.name.encode()  # no NUL terminator (5.8.4)
    if select == _S.ID_SERIAL:
        return p.serial.encode()
    if select == _S.ID_DEVIDS:
        return INPUT_DEVIDS.pack(*p.devids)
    if select == _S.PROP_BITS:
        return bitmap(p.props)
    if select == _S.EV_BITS:
        return bitmap(p.events.get(subsel, ()))
    if select == _S.ABS_INFO:
        info = p.abs_info.get(subsel)
        return INPUT_ABSINFO.pack(*info) if info is not None else b""
    return b""  # UNSET, and selects the spec does not define


def config_space(p: InputProfile, select: int, subsel: int) -> bytes:
    """struct virtio_input_config as the driver reads it after writing select and subsel."""
    u = answer(p, select, subsel)
    return INPUT_CONFIG.pack(select, subsel, len(u), u)


# --- the stock kinds ----------------------------------------------------------------------------

_KEYBOARD_LEDS = frozenset({Led.NUML, Led.CAPSL, Led.SCROLLL, Led.COMPOSE, Led.KANA})
_MOUSE_BUTTONS = frozenset(evdev.BUTTONS[n] for n in ("BTN_LEFT", "BTN_RIGHT", "BTN_MIDDLE",
                                                       "BTN_SIDE", "BTN_EXTRA"))


def profile(kind: str, *, name: str | None = None, serial: str = "",
            devids: tuple[int, int, int, int] | None = None, width: int = ABS_RANGE,
            height: int = ABS_RANGE) -> InputProfile:
    """A stock device: ``keyboard`` (every KEY_* code below 256, the keyboard LEDs, autorepeat),
    ``mouse`` (five buttons, REL_X/Y, wheels), ``tablet`` (absolute ABS_X/Y over 0..width/height,
    three buttons, a wheel) or ``multitouch`` (a direct touch screen with MT_SLOTS slots)."""
    if kind not in KINDS:
        raise UsageError(f"input kind {kind!r}: one of {', '.join(KINDS)}")
    if not (0 < width <= _I32[1] and 0 < height <= _I32[1]):
        raise UsageError(f"input size {width}x{height}: both above zero")
    events: dict[int, frozenset[int]] = {}
    abs_info: dict[int, AbsInfo] = {}
    props: frozenset[int] = frozenset()
    if kind == "keyboard":
        events[EventType.KEY] = frozenset(evdev.KEYS.values())
        events[EventType.LED] = _KEYBOARD_LEDS
        events[EventType.REP] = frozenset({Rep.DELAY, Rep.PERIOD})
    elif kind == "mouse":
        events[EventType.KEY] = _MOUSE_BUTTONS
        events[EventType.REL] = frozenset({Rel.X, Rel.Y, Rel.WHEEL, Rel.HWHEEL})
        props = frozenset({InputProp.POINTER})
    elif kind == "tablet":
        events[EventType.KEY] = frozenset(evdev.BUTTONS[n] for n in ("BTN_LEFT", "BTN_RIGHT", "BTN_MIDDLE"))
        events[EventType.REL] = frozenset({Rel.WHEEL})
        abs_info = {Abs.X: AbsInfo(0, width), Abs.Y: AbsInfo(0, height)}
    else:
        events[EventType.KEY] = frozenset(evdev.BUTTONS[n] for n in ("BTN_TOUCH", "BTN_TOOL_FINGER"))
        abs_info = {Abs.X: AbsInfo(0, width), Abs.Y: AbsInfo(0, height),
                    Abs.MT_SLOT: AbsInfo(0, MT_SLOTS - 1),
                    Abs.MT_TRACKING_ID: AbsInfo(0, 0xFFFF),
                    Abs.MT_POSITION_X: AbsInfo(0, width), Abs.MT_POSITION_Y: AbsInfo(0, height)}
        props = frozenset({InputProp.DIRECT})
    if abs_info:
        events[EventType.ABS] = frozenset(abs_info)
    ids = devids or (evdev.BUS_VIRTUAL, VENDOR, PRODUCT_BASE + KINDS.index(kind), 1)
    return InputProfile(kind, name if name is not None else f"pyvirtio {kind}", serial, ids,
                        props, events, abs_info).check()


__all__ = ["ABS_RANGE", "AbsInfo", "InputProfile", "KINDS", "MT_SLOTS", "answer", "bitmap",
           "config_space", "profile"]
