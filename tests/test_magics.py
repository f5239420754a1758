"""`%%container` and `%container` through a real labkit kernel: every option has an effect
a cell can see, output streams in order, failures and misuse fail the cell."""

import json
import os
import signal
import sys

import pytest

from kernel_fixtures import (  # noqa: F401 — fixtures are used by name
    cgroup_pids, container_ids, kernel, labkit_kernelspec, wait_until,
)

CGROUP_FILE = {  # v2 file, v1 file: whichever the host has
    "memory": ("memory.max", "memory/memory.limit_in_bytes"),
    "cpu": ("cpu.max", "cpu/cpu.cfs_quota_us"),
    "pids": ("pids.max", "pids/pids.max"),
}


def read_cgroup(kind):
    v2, v1 = CGROUP_FILE[kind]
    return f"cat /sys/fs/cgroup/{v2} 2>/dev/null || cat /sys/fs/cgroup/{v1}"


# --- the cell runs in a container, its output streams into the cell ----------------------


@pytest.mark.root
def test_cell_runs_in_its_own_pid_namespace(kernel):
    assert kernel.ok("%%container\necho $$").stdout == "1\n"


@pytest.mark.root
def test_output_arrives_as_it_is_written_and_in_order(kernel):
    reply = kernel.ok("%%container\necho a; sleep 0.3; echo b >&2; sleep 0.3; echo c")
    assert reply.streams == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")]


@pytest.mark.root
def test_output_of_two_writes_apart_in_time_is_two_messages(kernel):
    reply = kernel.ok("%%container\necho a; sleep 0.3; echo b")
    assert reply.streams == [("stdout", "a\n"), ("stdout", "b\n")]


# --- every option has an effect -------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("options, script, expected", [
    ("--name probe-name", "hostname", "probe-name"),
    ("--hostname lab", "hostname", "lab"),
    ("--memory 32m", read_cgroup("memory"), str(32 << 20)),
    ("-m 16m", read_cgroup("memory"), str(16 << 20)),
    ("--pids-limit 7", read_cgroup("pids"), "7"),
    ("--env GREETING=hi -e OTHER=there", "echo $GREETING $OTHER", "hi there"),
    ("--workdir /tmp", "pwd", "/tmp"),
    ("-w /etc", "pwd", "/etc"),
    ("--user 1234:5678", "id -u; id -g", "1234\n5678"),
    ("--net none", "ls /sys/class/net", "lo"),
    ("--init", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$", None),
    ("--userns", "cat /proc/self/uid_map", None),
    ("--shell ash", "echo $0", "ash"),
])
def test_option_has_its_effect_inside(kernel, options, script, expected):
    output = kernel.ok(f"%%container {options}\n{script}").stdout.strip()
    if options == "--init":
        first, me = output.splitlines()
        assert me != "1" and "sh" not in os.path.basename(first.split()[0]), "with --init, PID 1 is the init, not the cell's shell"
    elif options == "--userns":
        inside, outside, count = output.split()
        assert (inside, outside != "0") == ("0", True), "root inside maps to an unprivileged uid outside"
    else:
        assert output == expected


@pytest.mark.root
def test_cpus_sets_the_cpu_quota(kernel):
    output = kernel.ok(f"%%container --cpus 0.5\n{read_cgroup('cpu')}").stdout.split()
    assert output[0] == str(output[1:] and int(output[1]) // 2 or 50000)


@pytest.mark.root
def test_host_network_shows_the_hosts_interfaces(kernel):
    inside = set(kernel.ok("%%container --net host\nls /sys/class/net").stdout.split())
    # Other tests add and remove veths meanwhile: compare what both see, beyond lo.
    assert inside & set(os.listdir("/sys/class/net")) - {"lo"}


@pytest.mark.root
def test_bridge_network_gives_an_eth0(kernel):
    assert kernel.ok("%%container --net bridge\nls /sys/class/net").stdout.split() == ["eth0", "lo"]


@pytest.mark.root
def test_published_port_reaches_a_server_inside(kernel):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kernel.ok(f"%container run -d --name server --net bridge -p {port}:8080 -- "
              "sh -c 'echo served > /index.html; exec httpd -f -p 8080 -h /'")
    answer = kernel.ok(f"import urllib.request, time\n"
                       f"for _ in range(100):\n"
                       f"    try: print(urllib.request.urlopen('http://127.0.0.1:{port}/index.html', timeout=2).read().decode(), end=''); break\n"
                       f"    except OSError: time.sleep(0.1)").stdout
    kernel.ok("%container rm server")
    assert answer == "served\n"


@pytest.mark.root
def test_volume_is_visible_and_ro_is_read_only(kernel, tmp_path):
    (tmp_path / "note").write_text("from the host\n")
    reply = kernel.ok(f"%%container -v {tmp_path}:/data:ro --no-raise --out r\ncat /data/note; touch /data/x")
    assert reply.stdout == "from the host\n"
    assert "Read-only file system" in reply.stderr
    assert not (tmp_path / "x").exists()
    kernel.ok(f"%%container --volume {tmp_path}:/data\necho written > /data/y")
    assert (tmp_path / "y").read_text() == "written\n"


@pytest.mark.root
def test_time_namespace_moves_the_containers_clock(kernel):
    host_uptime = float(open("/proc/uptime").read().split()[0])
    inside = float(kernel.ok("%%container --timens 1000000\ncut -d' ' -f1 /proc/uptime").stdout)
    assert inside - host_uptime > 900_000


@pytest.mark.root
def test_timeout_kills_the_container_and_says_so(kernel):
    kernel.ok("%%container --timeout 0.5 --no-raise --out r\nsleep 30")
    reply = kernel.ok("print(r.timed_out, r.cause, r.ok)")
    assert reply.stdout == "True timed out False\n"


@pytest.mark.root
def test_python_runs_the_cell_with_the_kernels_interpreter_in_busybox(kernel):
    reply = kernel.ok("%%container --python --hostname py\n"
                      "import os, socket, ssl, json, sqlite3, ctypes, sys\n"
                      "print(socket.gethostname(), os.getpid(), os.path.exists('/bin/busybox'))\n"
                      "print(sys.version_info[:2])")
    assert reply.stdout == f"py 1 True\n{tuple(sys.version_info[:2])}\n"


@pytest.mark.root
def test_python_cell_streams_as_it_prints(kernel):
    reply = kernel.ok("%%container --python\nimport time\nprint('a')\ntime.sleep(0.3)\nprint('b')")
    assert reply.stdout == "a\nb\n"
    texts = [text for _, text in reply.streams]
    assert [i for i, t in enumerate(texts) if "a" in t][0] < [i for i, t in enumerate(texts) if "b" in t][0]


@pytest.mark.root
def test_option_line_expands_variables_from_the_user_namespace(kernel):
    kernel.ok("limit = '24m'\nwho = 'expanded'")
    reply = kernel.ok(f"%%container --memory {{limit}} --hostname $who\nhostname; {read_cgroup('memory')}")
    assert reply.stdout == f"expanded\n{24 << 20}\n"


# --- the Result, failures and misuse ------------------------------------------------------


@pytest.mark.root
def test_out_stores_the_result_with_its_fields(kernel):
    kernel.ok("%%container --memory 64m --out r\necho out; echo err >&2")
    reply = kernel.ok("print(r.exit_code, r.signal, repr(r.stdout), repr(r.stderr), r.memory_limit, r.ok,\n"
                      "      r.cause, r.duration > 0, r.memory_peak > 0, r.cpu_seconds >= 0, r.oom_killed)")
    assert reply.stdout == f"0 None 'out\\n' 'err\\n' {64 << 20} True exited 0 True True True False\n"


@pytest.mark.root
def test_failing_cell_raises_container_error_with_exit_code(kernel):
    reply = kernel.run("%%container\necho about to fail >&2; exit 3")
    assert (reply.status, reply.ename) == ("error", "ContainerError")
    assert "exited 3" in reply.evalue
    assert reply.stderr == "about to fail\n"
    kernel.run("import sys; error = sys.last_value")
    assert kernel.ok("print(error.exit_code, error.cause)").stdout == "3 exited 3\n"


@pytest.mark.root
def test_oom_killed_cell_says_so(kernel):
    reply = kernel.run("%%container --memory 8m\nhead -c 64m /dev/zero | tail > /dev/null")
    assert (reply.status, reply.ename) == ("error", "ContainerError")
    assert "OOM" in reply.evalue or "exited" in reply.evalue   # the kernel may kill tail, not PID 1
    kernel.ok("%%container --memory 8m --no-raise --out r\nhead -c 64m /dev/zero | tail > /dev/null")
    assert kernel.ok("print(r.oom_killed)").stdout == "True\n"


@pytest.mark.root
def test_pid_1_ignores_a_kill_from_inside(kernel):
    """The kernel protects a PID namespace's init from signals it has no handler for."""
    assert kernel.ok("%%container --out r\nkill -9 $$; echo survived").stdout == "survived\n"


@pytest.mark.root
def test_killed_from_outside_says_by_which_signal(kernel):
    """SIGKILL to the container's PID 1 from the host: the cell's error names the signal. Only
    PID 1 is killed: a child killed first would let PID 1 exit with 137 on its own, and the
    cell would rightly say "exit code 137" instead."""
    from labkit.grading.targets import namespace_pids
    before = set(container_ids(kernel.home))
    msg_id = kernel.send("%%container\nsleep 30")

    def pid1():
        for container_id in container_ids(kernel.home):
            if container_id not in before:
                for pid in cgroup_pids(container_id):
                    try:
                        if namespace_pids(pid)[-1] == 1:
                            return pid
                    except (FileNotFoundError, ProcessLookupError):
                        pass
        return None

    pid = wait_until(pid1, 30)
    assert pid, "the container's PID 1 never appeared"
    os.kill(pid, signal.SIGKILL)
    reply = kernel.collect(msg_id)
    assert (reply.ename, "killed by SIGKILL" in reply.evalue) == ("ContainerError", True), reply.evalue


@pytest.mark.root
def test_no_raise_keeps_the_cell_green(kernel):
    kernel.ok("%%container --no-raise --out r\nexit 4")
    assert kernel.ok("print(r.exit_code, r.ok)").stdout == "4 False\n"


@pytest.mark.parametrize("line, ename, words", [
    ("%%container --no-such-option", "UsageError", "unrecognized arguments: --no-such-option"),
    ("%%container --memory", "UsageError", "expected one argument"),
    ("%%container --timeout soon", "UsageError", "invalid float value"),
    ("%%container --memory lots", "ConfigError", "--memory 'lots' is not a size"),
    ("%%container --image no-such-image", "ImageNotFound", "no-such-image"),
    ("%%container --shell bash --python", "UsageError", "not allowed with"),
    ("%%container 'unclosed", "UsageError", "cannot split"),
    ("%%container exec no-such-container", "ContainerError", "no running container named 'no-such-container'"),
    ("%%image bogus", "UsageError", "takes only 'build NAME'"),
])
def test_misuse_fails_the_cell_with_an_error_message(kernel, line, ename, words):
    reply = kernel.run(f"{line}\ntrue")
    assert (reply.status, reply.ename) == ("error", ename)
    assert words in reply.evalue
    assert [kind for kind, _ in reply.messages] == ["error"], "an error message, not just a printed usage line"


def test_help_prints_and_does_not_fail(kernel):
    assert "--python" in kernel.ok("%%container --help\ntrue").stdout


# --- long-lived containers -----------------------------------------------------------------


@pytest.mark.root
def test_detached_container_lifecycle(kernel):
    kernel.ok("web = %container run -d --name web --memory 32m -- "
              "sh -c 'echo hello from $(hostname); exec sleep 1000'")
    # PID 1 is the shell until its exec of sleep is done, and mid-exec its cmdline reads
    # empty: wait for the exec itself (a file touched before it says nothing about it).
    exec_reply = kernel.ok("%%container exec web --env WHO=exec\n"
                           "until c=$(cat /proc/1/cmdline) && [ -n \"$c\" ] && [ \"${c#sh}\" = \"$c\" ]; "
                           "do sleep 0.05; done; echo $WHO sees $c")
    assert exec_reply.stdout == "exec sees sleep1000\n"
    assert kernel.ok("%container exec web -- hostname").stdout == "web\n"
    assert kernel.ok("%container logs web").stdout == "hello from web\n"
    ps = kernel.ok("%container ps").stdout.splitlines()
    assert ps[1].split()[:4] == ["web", kernel.ok("print(web.id)").stdout.strip(), "busybox", "running"]
    assert "of 32.0 MiB" in kernel.ok("%container stats web").stdout
    top = kernel.ok("%container top web").stdout.splitlines()
    assert top[1].split()[1:] == ["sleep", "1000"]
    inspected = json.loads(kernel.ok("%container inspect web").stdout)[0]
    assert (inspected["Name"], inspected["State"]["Running"], inspected["HostConfig"]["Memory"]) == \
        ("/web", True, 32 << 20)
    assert kernel.ok("%container stop -t 0.2 web").stdout == "web: killed by SIGKILL\n"
    assert "exited" in kernel.ok("%container ps").stdout
    assert kernel.ok("%container rm web").stdout == "removed web\n"
    assert "no long-lived containers" in kernel.ok("%container ps").stdout


@pytest.mark.root
def test_exec_failure_raises_and_no_raise_keeps_result(kernel):
    kernel.ok("%container run -d --name ex -- sleep 1000")
    reply = kernel.run("%%container exec ex\nexit 5")
    assert (reply.ename, "exited 5" in reply.evalue) == ("ContainerError", True)
    kernel.ok("%%container exec ex --no-raise --out r\nexit 6")
    assert kernel.ok("print(r.exit_code)").stdout == "6\n"
    kernel.ok("%container rm ex")


@pytest.mark.root
def test_commit_makes_an_image_a_new_container_can_run(kernel):
    kernel.ok("%container run -d --name maker -- sh -c 'echo baked > /marker; touch /tmp/ready; exec sleep 1000'")
    kernel.ok("%%container exec maker\nwhile [ ! -e /tmp/ready ]; do sleep 0.05; done")
    kernel.ok("%container commit maker marked")
    kernel.ok("%container rm maker")
    assert kernel.ok("%%container --image marked\ncat /marker").stdout == "baked\n"


@pytest.mark.root
def test_detached_run_stores_container_with_rich_repr(kernel):
    kernel.ok("%container run -d --name shown --out c -- sleep 1000")
    reply = kernel.ok("c")
    html = [c["data"].get("text/html", "") for t, c in reply.messages if t == "execute_result"][0]
    assert "container shown" in html and "running" in html
    kernel.ok("%container rm shown")


@pytest.mark.root
def test_run_without_a_command_says_what_it_runs(kernel):
    reply = kernel.ok("%container run")
    assert "no command given: running the image's 'sh'" in reply.stderr


def test_verbs_need_a_known_container(kernel):
    reply = kernel.run("%container logs nobody")
    assert (reply.ename, "no running container named 'nobody'" in reply.evalue) == ("ContainerError", True)


# --- widgets ------------------------------------------------------------------------------


@pytest.mark.root
def test_monitor_follows_a_container_against_its_limits_and_stops_when_it_exits(kernel):
    kernel.ok("%container run -d --name watched --memory 64m --cpus 0.5 --pids-limit 20 -- "
              "sh -c 'while :; do :; done'")
    reply = kernel.ok("from labkit.widgets import monitor\nfrom labkit.runtime import get\n"
                      "m = monitor(get('watched'), interval=0.1)\nm")
    assert "application/vnd.jupyter.widget-view+json" in reply.messages[0][1]["data"]
    kernel.ok("import time\nwhile not m.labels['cpu'].value: time.sleep(0.05)")
    reply = kernel.ok("print(m.memory.max, m.cpu.max, m.pids.max, m.memory.value > 0, m.labels['pids'].value)")
    assert reply.stdout == f"{float(64 << 20)} 50.0 20 True 1 of 20\n"
    kernel.ok("%container stop -t 0.1 watched")
    assert kernel.ok("m.thread.join(5); print(m.thread.is_alive(), m.title.value)").stdout == \
        "False <b>watched</b>: exited\n"
    kernel.ok("%container rm watched")


def test_progress_is_a_widget_in_a_notebook(kernel):
    reply = kernel.ok("from labkit.widgets import progress\n"
                      "with progress(3, 'steps') as p:\n    for _ in range(3): p.update()\nprint(p.bar.value)")
    assert reply.messages[0][0] == "display_data" and reply.stdout == "3\n"


# --- the verb tables: %image is labkit image, misuse of a line magic fails the cell ----------


def test_image_magic_prints_what_labkit_image_prints(kernel):
    import subprocess

    cli = subprocess.run([sys.executable, "-m", "labkit.cli", "image", "ls"], capture_output=True, text=True,
                         env=dict(os.environ, LABKIT_HOME=str(kernel.home)), timeout=60)
    assert kernel.ok("%image ls").stdout == cli.stdout
    assert kernel.ok("%image prune").stdout == "removed 0 unused layers\n"   # a verb the old %image lacked


@pytest.mark.parametrize("line, ename, words", [
    ("%image", "UsageError", "the following arguments are required: VERB"),
    ("%image bogus", "UsageError", "invalid choice: 'bogus'"),
    ("%image inspect", "UsageError", "the following arguments are required: image"),
    ("%image diff busybox --layer top", "UsageError", "invalid int value: 'top'"),
    ("%image inspect no-such-image", "ImageNotFound", "no-such-image"),
    ("%container bogus", "UsageError", "invalid choice: 'bogus'"),
    ("%container stop", "UsageError", "the following arguments are required: CONTAINER"),
    ("%container stop web --time soon", "UsageError", "invalid float value: 'soon'"),
])
def test_line_magic_misuse_fails_the_cell_with_an_error_message(kernel, line, ename, words):
    reply = kernel.run(line)
    assert (reply.status, reply.ename) == ("error", ename)
    assert words in reply.evalue
    assert [kind for kind, _ in reply.messages] == ["error"], "an error message, not just a printed usage line"
