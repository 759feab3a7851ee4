"""The public surface of each package is deliberate: everything exported exists, nothing drifts."""

import importlib
import types

import pytest

PACKAGES = [
    "radvault",
    "radvault.errors",
    "radvault.imaging",
    "radvault.vault",
    "radvault.access",
    "radvault.reports",
    "radvault.jobs",
    "radvault.dicom",
    "radvault.api",
    "radvault.pipeline",
    "radvault.web",
    "radvault.analysis",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for member in exported:
        assert hasattr(module, member), f"{name}.{member} is exported but missing"
    public = {
        attr for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name).startswith("radvault")
        and attr not in {"annotations", "TYPE_CHECKING"}
    }
    missing = public - set(exported)
    assert not missing, f"public but not exported: {missing}"
