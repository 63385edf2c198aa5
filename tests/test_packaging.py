"""pyproject.toml: the extras install together with the core pins, and the environment matches what it declares.

vLLM pins torch exactly and caps transformers in every release, so `pip install -e '.[vllm]'` only resolves when the
pinned release's requirements lie inside the core ranges. Those requirements are recorded below, so an edit that
moves the vllm pin, the torch range or the transformers range apart fails here rather than in someone's install.
"""

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# Requires-Dist of the vllm wheels on PyPI (vllm-<v>-cp38-abi3-manylinux_2_28_x86_64.whl METADATA, read with
# `pip install --dry-run --no-deps --ignore-installed --report`). Add a row before moving the pin to a new release.
VLLM_REQUIRES = {
    "0.33.0": {"torch": "==2.14.0", "torchvision": "==0.29.0", "transformers": ">=5.16.1,<5.21.0"},
    "0.32.0": {"torch": "==2.13.0", "torchvision": "==0.28.0", "transformers": ">=5.16.1,<5.20.0"},
}
# transformers releases on PyPI from 5.16.1 on (`pip index versions transformers`), to test range overlaps with.
TRANSFORMERS_RELEASES = ["5.16.1", "5.17.0", "5.18.0", "5.19.0", "5.20.0", "5.20.1", "5.20.2", "5.21.0", "5.21.1",
                         "5.22.0", "5.22.1", "5.22.2", "5.23.0", "5.24.0"]
# numpy that vllm 0.33.0 admits on Python 3.11 (its mistral_common 1.11.6-1.13.1 need numpy<2.4); recheck on a new pin.
VLLM_NUMPY = SpecifierSet("<2.4")
# Requires-Dist of snakemake-executor-plugin-slurm releases on PyPI (same way as VLLM_REQUIRES).
SLURM_PLUGIN_REQUIRES = {
    "2.8.0": {"numpy": ">=2.4.5,<3", "pandas": ">=2.3.3,<4", "snakemake-interface-executor-plugins": ">=9.4.0,<10"},
    "2.7.1": {"numpy": ">=2.4.5,<3", "pandas": ">=2.3.3,<4", "snakemake-interface-executor-plugins": ">=9.4.0,<10"},
    "2.7.0": {"numpy": ">=2.4.5,<3", "pandas": ">=2.3.3,<3", "snakemake-interface-executor-plugins": ">=9.4.0,<10"},
    "2.6.1": {"numpy": ">=1.26.4,<3", "pandas": ">=2.2.3,<3", "snakemake-interface-executor-plugins": ">=9.3.9,<10"},
}
# The machines' pip policy (/etc/xdg/pip/constraints.txt): newer torch/torchvision cannot be installed here.
MACHINE_CAPS = {"torch": SpecifierSet("<=2.14.1"), "torchvision": SpecifierSet("<=0.29.1")}


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def requirements(items: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(item) for item in items]
    return {r.name.lower(): r for r in parsed}


def core() -> dict[str, Requirement]:
    return requirements(project()["dependencies"])


def extra(name: str) -> dict[str, Requirement]:
    return requirements(project()["optional-dependencies"][name])


def pinned_vllm() -> str:
    spec = list(extra("vllm")["vllm"].specifier)
    assert len(spec) == 1 and spec[0].operator == "==", f"the vllm extra must pin one release, got {spec}"
    return spec[0].version


def test_the_vllm_extra_pins_a_recorded_release():
    version = pinned_vllm()
    assert version in VLLM_REQUIRES, f"vllm {version}: record its torch/transformers requirements in VLLM_REQUIRES"
    assert set(extra("vllm")) == {"vllm"}


def test_vllms_torch_pin_is_inside_the_core_range_and_the_machine_cap():
    needs = VLLM_REQUIRES[pinned_vllm()]
    torch = Version(needs["torch"].removeprefix("=="))
    assert core()["torch"].specifier.contains(torch), \
        f"vllm {pinned_vllm()} needs torch {torch}, outside the core range {core()['torch'].specifier}"
    assert MACHINE_CAPS["torch"].contains(torch)
    assert MACHINE_CAPS["torchvision"].contains(Version(needs["torchvision"].removeprefix("==")))


def test_the_transformers_range_overlaps_vllms():
    ours = core()["transformers"].specifier
    theirs = SpecifierSet(VLLM_REQUIRES[pinned_vllm()]["transformers"])
    both = [v for v in TRANSFORMERS_RELEASES if Version(v) in ours and Version(v) in theirs]
    assert both, f"no transformers release satisfies both {ours} (core) and {theirs} (vllm {pinned_vllm()})"


def test_the_slurm_and_peft_extras_are_part_of_the_test_extra():
    test = extra("test")
    for name in ("slurm", "peft"):
        for package, requirement in extra(name).items():
            assert package in test and test[package].specifier == requirement.specifier, (name, package)


def test_the_slurm_plugin_installs_beside_vllm_and_beside_pandas_3():
    """A GPU cluster env has both extras: the plugin range must keep a release whose numpy range meets vllm's."""
    plugin = extra("slurm")["snakemake-executor-plugin-slurm"].specifier
    releases = [v for v in SLURM_PLUGIN_REQUIRES if plugin.contains(v)]
    numpy_ok = [v for v in releases for numpy in ("2.2.6", "2.3.5", "2.4.6")
                if SpecifierSet(SLURM_PLUGIN_REQUIRES[v]["numpy"]).contains(numpy) and VLLM_NUMPY.contains(numpy)]
    assert numpy_ok, f"no release in {plugin} installs beside vllm {pinned_vllm()} (numpy {VLLM_NUMPY})"
    pandas_3 = [v for v in releases if SpecifierSet(SLURM_PLUGIN_REQUIRES[v]["pandas"]).contains("3.1.1")]
    assert pandas_3, f"no release in {plugin} accepts pandas 3"


def test_the_installed_environment_is_inside_the_declared_ranges():
    """The test environment was made from this file (workflow/bootstrap.sh test): every pin must hold in it."""
    declared = {**core(), **extra("test")}
    outside = {}
    for name, requirement in declared.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is declared but not installed; rerun `bash workflow/bootstrap.sh test`")
        if not requirement.specifier.contains(Version(installed), prereleases=True):
            outside[name] = f"{installed} not in {requirement.specifier}"
    assert not outside, outside
