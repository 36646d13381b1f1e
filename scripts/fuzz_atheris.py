"""Run one target of tests/support/fuzz_targets.py under atheris (libFuzzer, coverage-guided):
`fuzz_atheris.py TARGET [libFuzzer arguments: corpus directories, -max_total_time=S, ...]`.
scripts/fuzz --atheris runs it for each target with the corpus kept in tests/fuzz/corpus.

Parley's modules run as source (PARLEY_COMPILED=0) and are instrumented as they are imported,
so that libFuzzer sees which branches of the frame and request parsers an input reached.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PARLEY_COMPILED"] = "0"  # compiled modules are C: nothing to instrument

with atheris.instrument_imports(include=["parley"]):
    import parley.auth.signatures
    import parley.protocol.channels
    import parley.protocol.connection
    import parley.protocol.frames
    import parley.protocol.handshake
    import parley.transport.server  # noqa: F401

from tests.support.fuzz_targets import TARGETS  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz_atheris.py {'|'.join(TARGETS)} [libFuzzer arguments]")
    name = sys.argv[1]
    # libFuzzer runs its argv[0] again for -merge=1 (through the shell): this interpreter on
    # this script with this target.
    again = " ".join(shlex.quote(part) for part in (sys.executable, __file__, name))
    atheris.Setup([again, *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
