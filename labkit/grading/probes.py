"""Every probe a check cell can use, in one namespace (`probes.hostname(...)`).

A probe factory takes what to look at (a container name, an image name, a Result or an
`Answer("variable")`) and returns a zero-argument callable that looks when the check runs.
"""

from labkit.grading.layers import (commit_excludes_init, image_contains, image_lacks, is_whiteout_of,
                                   top_layer_adds, top_layer_deletes)
from labkit.grading.mounts import file_in_root, own_proc, root_filesystem
from labkit.grading.network import (echo_between, port_answers, reaches_by_name, same_bridge, two_network_namespaces,
                                    veth_addresses_in, veth_pair_between, veths_up)
from labkit.grading.processes import (host_pid_of_pid1, hostname, own_namespaces, pid_view,
                                      root_inside_not_outside, same_namespace, shares_namespace, uid_inside)
from labkit.grading.resources import (cpu_limit, cpu_share, finished_ok, fork_bomb_held, lives_with_memory,
                                      memory_limit, memory_limit_at_most, oom_killed, pids_limit, throttled)
from labkit.grading.targets import Answer

__all__ = ["Answer", "commit_excludes_init", "cpu_limit", "cpu_share", "echo_between", "file_in_root", "finished_ok",
           "fork_bomb_held",
           "host_pid_of_pid1", "hostname", "lives_with_memory", "image_contains", "image_lacks", "is_whiteout_of", "memory_limit",
           "memory_limit_at_most",
           "oom_killed", "own_namespaces", "own_proc", "pid_view", "pids_limit", "port_answers", "reaches_by_name",
           "root_filesystem", "root_inside_not_outside", "same_bridge", "same_namespace", "shares_namespace", "throttled", "top_layer_adds",
           "top_layer_deletes", "two_network_namespaces", "uid_inside", "veth_addresses_in", "veth_pair_between", "veths_up"]
