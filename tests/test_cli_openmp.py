"""The decoding commands' short OpenMP spin (cli.openmp_environment): set for generate, chat and
serve before any kernel loads, never for training, and never over a user's own GOMP_SPINCOUNT."""
import os
import subprocess
import sys

from microgpt import cli


def test_only_the_decoding_commands_get_the_short_spin():
    for command in cli.DECODE_COMMANDS:
        assert cli.openmp_environment(command, {})["GOMP_SPINCOUNT"] == cli.DECODE_SPINCOUNT
    for command in ("train", "eval", "finetune", "quantize", "lifecycle"):
        assert "GOMP_SPINCOUNT" not in cli.openmp_environment(command, {})


def test_a_users_spincount_wins():
    assert cli.openmp_environment("generate", {"GOMP_SPINCOUNT": "7"})["GOMP_SPINCOUNT"] == "7"


def test_main_sets_it_before_the_command_loads_the_kernels(tmp_path):
    """In a fresh process: `microgpt generate` on a missing run fails cleanly (exit 2), but by
    then the environment holds the spin and the C kernels were not loaded before it was set."""
    code = ("import os, sys\n"
            "from microgpt import cli\n"
            "loaded = []\n"
            "real = cli.openmp_environment\n"
            "def spy(command, environ=os.environ):\n"
            "    loaded.append(any(m.endswith('._cpu') for m in sys.modules))\n"
            "    return real(command, environ)\n"
            "cli.openmp_environment = spy\n"
            "status = cli.main(['generate', sys.argv[1]])\n"
            "print(status, os.environ.get('GOMP_SPINCOUNT'), loaded)\n")
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no_such_run")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", cli.DECODE_SPINCOUNT, "[False]"], out.stdout + out.stderr
