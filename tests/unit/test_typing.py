"""Types on the pure side: mypy passes on exactly the paths ``[tool.mypy].files`` lists, and
the small value classes mypy cannot read by themselves say their fields' types."""

import importlib
import os
import subprocess
import sys
import tomllib

import pytest

from overlaynet.cni import spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PURE_PATHS = [
    "overlaynet/api",
    "overlaynet/ipam",
    "overlaynet/datapath",
    "overlaynet/proxy",
    "overlaynet/policy",
    "overlaynet/cni/spec.py",
    "overlaynet/names.py",
    "overlaynet/errors.py",
    "overlaynet/control/scheduler.py",
    "overlaynet/control/endpoints.py",
    "overlaynet/node/bird_config.py",
]
TYPED_PACKAGES = ["api", "ipam", "datapath", "datapath.modes", "proxy", "policy", "cni"]


def test_pyproject_checks_exactly_the_pure_paths():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    assert config["tool"]["mypy"]["files"] == PURE_PATHS
    assert any(dep.startswith("mypy") for dep in config["project"]["optional-dependencies"]["test"])


def test_mypy_passes_on_the_pure_side(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *PURE_PATHS], check=False,
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def record_classes() -> list[type]:
    modules = ["overlaynet.cni.spec", "overlaynet.ipam.hostlocal", "overlaynet.cni.invocation",
               "overlaynet.cni.main_config"]
    classes = [value for name in modules for value in vars(importlib.import_module(name)).values()
               if isinstance(value, type) and issubclass(value, spec.Record) and value is not spec.Record]
    return sorted(set(classes), key=lambda cls: f"{cls.__module__}.{cls.__name__}")


@pytest.mark.parametrize("cls", record_classes(), ids=lambda cls: cls.__name__)
def test_every_record_field_has_a_type_and_every_typed_name_is_a_field(cls):
    assert tuple(cls.__annotations__) == cls.__slots__


@pytest.mark.parametrize("package", TYPED_PACKAGES)
def test_every_name_a_package_exports_exists(package):
    module = importlib.import_module(f"overlaynet.{package}")
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        if not hasattr(module, name):
            importlib.import_module(f"overlaynet.{package}.{name}")  # a submodule
