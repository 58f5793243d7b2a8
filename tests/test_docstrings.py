"""Every public class and function of the API a user calls has a docstring.

The API: the transports, the drivers and devices, ``VirtioDevice`` and ``VirtioDriver``, the rings
and guest memory.  A method that overrides a documented one (a transport's ``get_status``) takes
its documentation from there, as ``help()`` does; the rest must say what they do themselves.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

API = [
    "pyvirtio.transport", "pyvirtio.loopback", "pyvirtio.pci.transport", "pyvirtio.mmio.transport",
    "pyvirtio.vhost_user.frontend.transport", "pyvirtio.platform.interface",
    "pyvirtio.drivers.blk", "pyvirtio.drivers.rng", "pyvirtio.drivers.net", "pyvirtio.drivers.console",
    "pyvirtio.drivers.console_port", "pyvirtio.drivers.console_aio", "pyvirtio.drivers.input",
    "pyvirtio.drivers.vsock",
    "pyvirtio.devices.blk", "pyvirtio.devices.rng", "pyvirtio.devices.net", "pyvirtio.devices.console",
    "pyvirtio.devices.input", "pyvirtio.devices.vsock",
    "pyvirtio.device", "pyvirtio.driver", "pyvirtio.bus", "pyvirtio.interrupt",
    "pyvirtio.virtq.base", "pyvirtio.virtq.split_device", "pyvirtio.virtq.split_driver",
    "pyvirtio.virtq.packed_device", "pyvirtio.virtq.packed_driver", "pyvirtio.virtq.layout",
    "pyvirtio.virtq.chain", "pyvirtio.memory", "pyvirtio.alloc",
]


def _doc(cls: type, name: str) -> str | None:
    """The docstring of ``cls.name`` or of what it overrides (the MRO, as ``help()`` reads it)."""
    for klass in cls.__mro__:
        attr = vars(klass).get(name)
        if attr is None:
            continue
        if isinstance(attr, property):
            doc = attr.__doc__ or (attr.fget.__doc__ if attr.fget else None)
        else:
            doc = getattr(getattr(attr, "__func__", attr), "__doc__", None)
        if doc:
            return doc
    return None


def _undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) and not obj.__doc__:
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        if not obj.__doc__:
            missing.append(name)
        for attr_name, attr in vars(obj).items():
            func = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
            if attr_name.startswith("_") or not inspect.isfunction(func):
                continue
            if not _doc(obj, attr_name):
                missing.append(f"{name}.{attr_name}")
    return missing


@pytest.mark.parametrize("module_name", API)
def test_public_api_is_documented(module_name):
    assert _undocumented(module_name) == []
