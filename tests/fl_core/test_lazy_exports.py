"""Package names load on first use and behave as plain attributes (fl_core.lazy)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fl_core
import secure_agg


def test_every_exported_name_resolves_and_unknown_names_raise():
    for pkg in (fl_core, secure_agg):
        assert all(getattr(pkg, name) is not None for name in pkg.__all__)
        assert set(pkg.__all__) <= set(dir(pkg))
        with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
            pkg.NoSuchThing  # noqa: B018


def test_a_protocol_module_does_not_load_pytorch():
    code = "import sys, secure_agg.flower_wire, secure_agg.client_state; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
