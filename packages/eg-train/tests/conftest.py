"""Shared fixtures for eg-train tests: the toy module loaded by path (tests run with importlib mode)."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOY_PATH = Path(__file__).with_name("toy_train.py")


@pytest.fixture(scope="session")
def toy():
    """The toy_train helper module."""
    name = "eg_train_tests_toy"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOY_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
