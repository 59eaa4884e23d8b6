"""The agent runs on phones, kiosks and laptops: it must never import torch."""
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The agent's own modules and the core speech path it runs (tests/test_architecture.py checks every import
# statically; this imports them for real).
AGENT_MODULES = sorted(
    [f"moodstream.agent.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "agent")])]
    + [f"moodstream.speech.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "moodstream" / "speech")])])

# Fails any import of torch (or of the parts that need it) and records who tried,
# so an import attempt is caught even where torch is not installed.
AGENT_FORBIDDEN = ("torch", "transformers", "moodstream.model", "moodstream.server", "moodstream.trainer")
# The root command also builds the other parts' parsers (cheap modules); the weights stay out.
CLI_FORBIDDEN = ("torch", "transformers")
GUARD = textwrap.dedent("""
    import sys
    attempts = []
    class Guard:
        def find_spec(self, name, path=None, target=None):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                attempts.append(name)
                raise ImportError(f"the agent must not import {name}")
            return None
    sys.meta_path.insert(0, Guard())
""")


def run_guarded(code: str, forbidden: tuple[str, ...]) -> subprocess.CompletedProcess:
    program = f"FORBIDDEN = {forbidden!r}\n" + GUARD + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-P", "-c", program], capture_output=True, text=True, timeout=120)


def test_the_agent_package_lists_its_modules():
    assert {"moodstream.agent.sources", "moodstream.speech.vad", "moodstream.speech.chunker",
            "moodstream.agent.outbox", "moodstream.agent.client", "moodstream.agent.cli"} <= set(AGENT_MODULES)


def test_importing_every_agent_module_never_imports_torch():
    run = run_guarded(f"""
        import importlib
        for name in ["moodstream.agent", "moodstream.speech"] + {AGENT_MODULES!r}:
            importlib.import_module(name)
        assert not attempts, attempts
        assert "torch" not in sys.modules
        print("ok")
    """, AGENT_FORBIDDEN)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


@pytest.mark.parametrize("argv", [["agent", "--help"], ["--help"]])
def test_moodstream_agent_help_never_imports_torch(argv):
    # Through the root command, which also builds the other parts' parsers.
    run = run_guarded(f"""
        from moodstream.compose.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        assert not attempts, attempts
        assert "torch" not in sys.modules
        print("ok")
    """, CLI_FORBIDDEN)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr
    if argv[0] == "agent":
        assert "--participant" in run.stdout and "--prompt-intervals" in run.stdout
