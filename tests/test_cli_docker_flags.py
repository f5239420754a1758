"""`labkit run`'s flags spelled and read as Docker's: no abbreviations, `-e KEY` with the
caller's value, `--env-file`, `--tmpfs PATH[:OPTIONS]`, `-h` as the hostname. Each kernel
row is a real `labkit` process on the real kernel, and leaves nothing behind."""

import argparse
import os
import subprocess
import sys

import pytest

from labkit.errors import ConfigError
from labkit.runtime.spec import ContainerSpec, format_tmpfs, parse_tmpfs


def labkit(*args, home, env=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home), **(env or {})), timeout=120)


def nothing_left(home) -> bool:
    containers = home / "containers"
    with open("/proc/self/mountinfo") as mounts:
        return (not containers.exists() or os.listdir(containers) == []) and str(home) not in mounts.read()


# --- no abbreviations --------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--pid", "host"], ["--mem", "64m"], ["--pids", "5"], ["--priv"],
                                  ["--entry", "sh"]])
def test_a_prefix_of_an_option_is_refused_not_taken_for_it(labkit_home, args):
    """`--pid host` is Docker's "share the host's PID namespace", which labkit has not: it
    must be refused, not read as `--pids-limit host`."""
    done = labkit("run", *args, "--", "true", home=labkit_home)
    assert done.returncode == 125
    assert f"unrecognized arguments: {args[0]}" in done.stderr
    assert nothing_left(labkit_home)


def test_argparse_alone_would_take_the_prefix():
    """The defence is allow_abbrev=False: the same table in a parser that allows
    abbreviations reads `--pid host` as `--pids-limit host`."""
    from labkit.verbs import add_container_options

    parser = argparse.ArgumentParser(allow_abbrev=True)
    add_container_options(parser)
    assert parser.parse_args(["--pid", "host"]).pids == "host"


def every_parser(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from every_parser(child)


def test_no_parser_of_labkit_or_its_magics_allows_abbreviations():
    from labkit.cli import build_parser
    from labkit.magics import container as container_magic

    parsers = list(every_parser(build_parser()))
    for magic in (container_magic.cell_parser(), container_magic.exec_cell_parser(), container_magic.line_parser()):
        parsers += every_parser(magic)
    assert len(parsers) > 20
    assert [parser.prog for parser in parsers if parser.allow_abbrev] == []


# --- -e KEY, --env-file ------------------------------------------------------------------

def test_a_bare_env_key_takes_the_callers_value_or_is_not_set(monkeypatch):
    monkeypatch.setenv("LABKIT_TEST_SET", "from host")
    monkeypatch.delenv("LABKIT_TEST_UNSET", raising=False)
    spec = ContainerSpec(env=["LABKIT_TEST_SET", "LABKIT_TEST_UNSET", "A=1"]).validated()
    assert spec.env == ["LABKIT_TEST_SET=from host", "A=1"]
    assert spec.validated().env == spec.env   # validated twice (front end, then Container): the same


def test_an_env_file_is_read_as_docker_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("NOT_ON_HOST", raising=False)
    path = tmp_path / "env"
    path.write_text("# a comment\n\n   SPACED=a b  \nQUOTED=\"q\"\nFROM_HOST\nNOT_ON_HOST\nEMPTY=\nOVER=file\n")
    spec = ContainerSpec(env_file=[str(path)], env=["OVER=flag"]).validated()
    assert spec.env == ["SPACED=a b  ", 'QUOTED="q"', "FROM_HOST=h", "EMPTY=", "OVER=file", "OVER=flag"]
    path.write_text("GOOD=1\nBAD KEY=2\n")
    with pytest.raises(ConfigError, match=r"--env-file .* line 2: 'BAD KEY=2'"):
        ContainerSpec(env_file=[str(path)]).validated()


@pytest.mark.root
def test_env_reaches_the_container_as_docker_passes_it(labkit_home, tmp_path):
    path = tmp_path / "env"
    path.write_text("FILE=f\nOVER=file\nPASSED\n")
    done = labkit("run", "--env-file", str(path), "-e", "OVER=flag", "-e", "HOSTV", "-e", "UNSETV", "--",
                  "sh", "-c", 'echo "$FILE $OVER $PASSED $HOSTV ${UNSETV-unset}"', home=labkit_home,
                  env={"HOSTV": "hv", "PASSED": "p"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "f flag p hv unset\n", "")
    assert nothing_left(labkit_home)


# --- --tmpfs PATH[:OPTIONS] --------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("/tmp", ("/tmp", 2 | 4 | 8, "")),                                 # Docker's nosuid,nodev,noexec
    ("/tmp:size=1m", ("/tmp", 2 | 4 | 8, "size=1m")),
    ("/run:exec,mode=755,uid=1,gid=2", ("/run", 2 | 4, "mode=755,uid=1,gid=2")),
    ("/r:ro,suid,dev,exec", ("/r", 1, "")),
    ("/a/../b/:size=50%", ("/b", 2 | 4 | 8, "size=50%")),
])
def test_tmpfs_options_are_read_as_mount_reads_them(text, parsed):
    assert parse_tmpfs(text) == parsed
    assert parse_tmpfs(format_tmpfs(*parsed)) == parsed


@pytest.mark.root
def test_tmpfs_options_reach_the_kernel(labkit_home):
    """Before, `--tmpfs /tmp:size=1m` made a directory named '/tmp:size=1m'."""
    script = ("grep -E ' /(small|run) ' /proc/mounts | cut -d' ' -f2,4; ls -d /tmp:* 2>/dev/null; "
              "printf '#!/bin/sh\\necho ran\\n' > /small/x && chmod +x /small/x && /small/x; echo noexec $?; "
              "cp /small/x /run/x && /run/x; "
              "dd if=/dev/zero of=/small/fill bs=1k count=2048 2>/dev/null; echo full $?")
    done = labkit("run", "--tmpfs", "/small:size=1m,mode=700", "--tmpfs", "/run:exec", "--", "sh", "-c", script,
                  home=labkit_home)
    lines = done.stdout.splitlines()
    small, run = (dict(line.split(" ", 1) for line in lines[:2])[path].split(",") for path in ("/small", "/run"))
    assert {"rw", "nosuid", "nodev", "noexec", "size=1024k", "mode=700"} <= set(small)
    assert {"nosuid", "nodev"} <= set(run) and "noexec" not in run
    assert lines[2:] == ["noexec 126", "ran", "full 1"]   # ENOSPC at 1 MiB
    assert nothing_left(labkit_home)


# --- run -h ------------------------------------------------------------------------------

@pytest.mark.root
def test_run_h_is_the_hostname_and_help_is_still_there(labkit_home):
    done = labkit("run", "-h", "box7", "--", "hostname", home=labkit_home)
    assert (done.returncode, done.stdout) == (0, "box7\n")
    helped = labkit("run", "--help", home=labkit_home)
    assert helped.returncode == 0 and "-h HOSTNAME" in helped.stdout and "--help" in helped.stdout


# --- signals to `labkit run` go to the container -----------------------------------------

TRAPS = ('trap "echo got TERM; exit 7" TERM; trap "echo got HUP; exit 8" HUP; trap "echo got INT; exit 9" INT; '
         'echo ready; while :; do sleep 0.05; done')


def started(home, *args):
    """A `labkit run` whose container has printed its first line."""
    process = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, LABKIT_HOME=str(home)))
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.mark.root
@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 7), ("SIGHUP", 8), ("SIGINT", 9)])
def test_a_signal_to_labkit_run_goes_to_the_containers_pid_1(labkit_home, signal_name, code):
    """As `docker run` (its --sig-proxy): PID 1's trap runs and its exit status is labkit's.
    Without the forwarding, SIGTERM and SIGHUP kill labkit itself (-15, -1) and SIGINT
    kills the container (130), and no trap runs."""
    import signal

    process = started(labkit_home, "--", "sh", "-c", TRAPS)
    process.send_signal(getattr(signal, signal_name))
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out) == (code, f"got {signal_name[3:]}\n"), err
    assert nothing_left(labkit_home)


@pytest.mark.root
def test_a_container_killed_by_the_forwarded_signal_exits_128_plus_it(labkit_home):
    """`--init` passes SIGTERM on to `sleep`, which dies of it: 143, as Docker reports."""
    import signal

    process = started(labkit_home, "--init", "--", "sh", "-c", "echo ready; exec sleep 100")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert nothing_left(labkit_home)


@pytest.mark.root
def test_the_third_interrupt_kills_a_pid_1_that_ignores_them(labkit_home):
    """PID 1 without a handler never sees SIGINT (the kernel's rule for init): interrupts
    one by one (each waited for, as a user presses ^C) and the third one kills it."""
    import signal
    import time

    # "ready" once PID 1 is `sleep`: busybox sh, PID 1 before its exec, catches SIGINT and
    # exits 130 (seen under load, when the first interrupt came between echo and exec).
    process = started(labkit_home, "--", "sh", "-c",
                      'until [ "$(cat /proc/1/comm)" = sleep ]; do sleep 0.01; done && echo ready & exec sleep 100')
    for _ in range(2):
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)   # not a timing assertion: signals sent at once may arrive as one
        assert process.poll() is None, "a forwarded SIGINT that PID 1 ignores leaves it running"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert nothing_left(labkit_home)
