"""``pyvirtio accelerate``: compile the ring cores with mypyc for this install (:mod:`pyvirtio.accel`).

The build needs mypy (which ships mypyc), a C compiler and the Python headers; it takes about a
minute and lands in a cache directory, never in the installed package.  ``--status`` says which
cores run; ``--remove`` deletes this install's builds (the pure Python cores run again);
``PYVIRTIO_PURE=1`` ignores a build without removing it.
"""

from __future__ import annotations

import sys

from ..errors import CliError


def register(sub) -> None:
    p = sub.add_parser("accelerate", help="compile the ring cores with mypyc (optional, faster)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="say which ring cores run, build nothing")
    what.add_argument("--remove", action="store_true", help="delete this install's builds")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import accel

    if args.status:
        print(accel.describe())
        missing = accel.missing_tools()
        if missing:
            print(f"cannot build here: missing {', '.join(missing)}")
        return 0
    if args.remove:
        gone = accel.remove()
        print(f"removed {len(gone)} build(s)" + "".join(f"\n  {path}" for path in gone))
        return 0
    try:
        path = accel.build(progress=lambda msg: print(f"accelerate: {msg}", file=sys.stderr, flush=True))
    except accel.AccelError as exc:
        raise CliError(f"accelerate: {exc}") from None
    print(f"built {len(accel.MODULES)} modules in {path}; new pyvirtio processes use them "
          "(PYVIRTIO_PURE=1 to run without)")
    return 0
