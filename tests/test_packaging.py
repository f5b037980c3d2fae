"""What `pip install` reads: pins that agree between pyproject.toml and every requirements file, a
package without a top-level `configs`, the licence files, and configs that load from any directory."""

import os
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _file:
    PYPROJECT = tomllib.load(_file)


def pyproject_requirements() -> dict[str, list[Requirement]]:
    found = {}
    project = PYPROJECT["project"]
    for line in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
        requirement = Requirement(line)
        found.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return found


def requirements_files() -> dict[str, list[Requirement]]:
    files = {}
    for name in sorted(os.listdir(ROOT)):
        if re.fullmatch(r"requirements(-[\w-]+)?\.txt", name):
            with open(os.path.join(ROOT, name)) as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
            files[name] = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return files


def probes(*specifier_sets) -> list[Version]:
    """Every version the specifiers name, and the versions just around each."""
    versions = set()
    for specifiers in specifier_sets:
        for spec in specifiers:
            v = Version(spec.version.replace(".*", ""))
            release = list(v.release) + [0] * (3 - len(v.release))
            versions |= {
                v,
                Version(".".join(map(str, release[:2] + [release[2] + 1]))),
                Version(f"{release[0]}.{release[1] + 1}"),
            }
            if release[2]:
                versions.add(Version(".".join(map(str, release[:2] + [release[2] - 1]))))
    return sorted(versions)


def test_every_requirements_file_pins_within_pyproject():
    ours = pyproject_requirements()
    checked = 0
    for name, requirements in requirements_files().items():
        for requirement in requirements:
            key = canonicalize_name(requirement.name)
            assert key in ours, f"{name}: {requirement.name} is not in pyproject.toml"
            ranges = [r.specifier for r in ours[key]]
            for version in probes(requirement.specifier, *ranges):
                if requirement.specifier.contains(version, prereleases=True):
                    assert any(r.contains(version, prereleases=True) for r in ranges), (
                        name,
                        str(requirement),
                        str(version),
                    )
            checked += 1
    assert checked >= 5  # torch (twice), torchvision, jax[cuda12], jax[cuda13]


def test_the_pin_check_catches_a_mismatch():
    jax = pyproject_requirements()["jax"][0].specifier
    outside = Requirement("jax[cuda12]>=0.10.2,<0.11").specifier, Requirement("jax[cuda12]>=0.9,<0.12").specifier
    assert all(v in Requirement("jax>=0.10.2,<0.11").specifier for v in ("0.10.2", "0.10.9"))
    assert any(outside[1].contains(v) and not jax.contains(v) for v in probes(outside[1], jax))
    assert not any(outside[0].contains(v) and not jax.contains(v) for v in probes(outside[0], jax))


def test_the_package_installs_no_top_level_configs_and_ships_its_licence():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert all(package.startswith("alexnet_jax") for package in setuptools["packages"])
    assert setuptools["package-dir"] == {"alexnet_jax.configs": "configs"}
    on_disk = {
        os.path.relpath(d, ROOT).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "alexnet_jax"))
        if "__init__.py" in files
    }
    assert on_disk | {"alexnet_jax.configs"} == set(setuptools["packages"])  # no subpackage left out
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert Requirement(PYPROJECT["build-system"]["requires"][0]).specifier.contains("77.0")  # SPDX licence field
    assert not Requirement(PYPROJECT["build-system"]["requires"][0]).specifier.contains("76.1")
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    with open(os.path.join(ROOT, "NOTICE")) as f:
        assert "tensorflow-datasets" in f.read()


def test_configs_load_by_path_from_another_directory(tmp_path):
    """No `import configs`: a config file loads from anywhere, with no `configs` package importable."""
    script = (
        "import sys; sys.modules['configs'] = None\n"  # any `import configs` now fails
        "from alexnet_jax import cli, config_files\n"
        f"config = cli.load_config({os.path.join(ROOT, 'configs', 'smoke.py')!r})\n"
        f"ablation = cli.load_config({os.path.join(ROOT, 'configs', 'ablations.py') + ':no_lrn,default'!r})\n"
        "print(config.data.source, ablation.model.lrn, config_files.shipped('caffe').model.lrn_span)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["fake", "False", "all"]
