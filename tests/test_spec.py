"""ContainerSpec validation: pure logic, caught before anything is made."""

import pytest

from labkit.errors import ConfigError
from labkit.runtime.spec import ContainerSpec, Volume


def test_a_shell_string_becomes_sh_c():
    assert ContainerSpec(command="echo hi").validated().command == ["sh", "-c", "echo hi"]


def test_units_are_parsed_once_into_bytes_cores_and_counts():
    spec = ContainerSpec(memory="64m", cpus="0.5", pids="20").validated()
    assert (spec.memory, spec.cpus, spec.pids) == (64 << 20, 0.5, 20)


@pytest.mark.parametrize("fields, message", [
    ({"namespaces": ("mnt", "bogus")}, "unknown namespace kind 'bogus'"),
    ({"namespaces": ("pid", "net")}, "own mount namespace"),
    ({"env": ["=NOKEY"]}, "KEY=VALUE"),
    ({"volumes": ["/does/not/exist:/data"]}, "does not exist on the host"),
    ({"volumes": ["/tmp"]}, "SRC:DST"),
    ({"volumes": ["/tmp:relative"]}, "absolute path"),
    ({"volumes": ["/tmp:/data:rx"]}, "mode must be ro or rw"),
    ({"workdir": "relative"}, "absolute path"),
    ({"timeout": "-1"}, "more than zero"),
    ({"network": "wifi"}, "none, host, bridge"),
    ({"name": "has space"}, "container name"),
    ({"hostname": "-bad"}, "hostname"),
    ({"cap_add": ["FLY"]}, "unknown capability"),
    ({"publish": ["8080:80"]}, "needs --net bridge"),
    ({"memory": "lots"}, "--memory 'lots' is not a size"),
    ({"cpus": "half"}, "--cpus 'half' is not a number"),
    ({"pids": "many"}, "--pids-limit 'many' is not a whole number"),
    ({"timeout": "soon"}, "--timeout 'soon'"),
])
def test_bad_specs_are_refused_with_the_reason(fields, message):
    with pytest.raises(ConfigError, match=message):
        ContainerSpec(**fields).validated()


def test_host_network_drops_the_net_namespace_and_a_time_offset_adds_one():
    spec = ContainerSpec(network="host", time_offset=5).validated()
    assert "net" not in spec.namespaces
    assert "time" in spec.namespaces


def test_volumes_parse_like_docker(tmp_path):
    volume = Volume.parse(f"{tmp_path}:/data:ro")
    assert (volume.source, volume.target, volume.readonly) == (str(tmp_path), "/data", True)


def test_capabilities_accept_docker_spellings():
    assert ContainerSpec(cap_add=["SYS_ADMIN", "cap_net_admin"]).validated().cap_add == ["sys_admin", "net_admin"]


def test_the_network_mode_is_parsed_once_into_a_type():
    from labkit.runtime import NetworkMode

    modes = {text: ContainerSpec(network=text).validated().network for text in ("none", "host", "bridge", "container:web")}
    assert {text: (m.kind, m.peer, m.managed, m.is_host, m.is_bridge) for text, m in modes.items()} == {
        "none": ("none", None, False, False, False), "host": ("host", None, False, True, False),
        "bridge": ("bridge", None, True, False, True), "container:web": ("container", "web", True, False, False)}
    assert [str(mode) for mode in modes.values()] == ["none", "host", "bridge", "container:web"]
    assert NetworkMode.parse(modes["bridge"]) is modes["bridge"]
    for bad in ("container:", "bridge:x", "Host"):
        with pytest.raises(ConfigError, match="is not one of none, host, bridge, pasta, container:NAME"):
            ContainerSpec(network=bad).validated()


def test_userns_is_translated_in_one_place_and_its_map_is_a_type():
    from labkit.runtime import DEFAULT_NAMESPACES, UserNamespaceMap, userns_fields

    assert userns_fields(False) == {}
    assert userns_fields(True) == {"namespaces": DEFAULT_NAMESPACES + ("user",)}
    spec = ContainerSpec(**userns_fields(True), user_map=(200000, 1000)).validated()
    assert spec.user_map == UserNamespaceMap(uid=200000, count=1000) and spec.user_map.uid == 200000
    assert ContainerSpec().validated().user_map == (100000, 65536)
    for bad, why in (((0, 65536), "must be positive"), ((1, 2, 3), "is not \\(host uid, count\\)"), ("x", "is not")):
        with pytest.raises(ConfigError, match=why):
            ContainerSpec(user_map=bad).validated()



def test_roots_userns_map_is_no_users_range_and_one_that_is_is_refused(tmp_path, monkeypatch):
    """Root's --userns containers had host ids 100000.. by default: the range Debian's
    useradd gives the first user, whose own user namespaces could then signal them and
    write their files (an audit, as a student). The default is far above useradd's ranges,
    and a map that shares an id with any /etc/subuid or /etc/subgid range is refused."""
    from labkit.runtime import spec as spec_module
    from labkit.runtime.spec import ROOT_USERNS_FIRST_ID, UserNamespaceMap, refuse_ids_of_users

    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("student:100000:65536\nother:165536:65536\n")   # what useradd writes, first two users
    subgid.write_text("student:100000:65536\n")
    files = (str(subuid), str(subgid))
    with pytest.raises(ConfigError, match=r"shares ids with the range .*subuid gives student \(100000-165535\)"):
        refuse_ids_of_users(UserNamespaceMap(100000, 65536), files)   # the former default
    with pytest.raises(ConfigError, match="gives other"):
        refuse_ids_of_users(UserNamespaceMap(231071, 1), files)       # one id is enough
    refuse_ids_of_users(UserNamespaceMap(231072, 65536), files)
    refuse_ids_of_users(UserNamespaceMap(ROOT_USERNS_FIRST_ID, 65536), files)
    assert ROOT_USERNS_FIRST_ID > 600_100_000   # SUB_UID_MAX: useradd hands out nothing above it

    monkeypatch.setattr(spec_module, "running_rootless", lambda: False)
    monkeypatch.setattr(spec_module, "in_initial_user_namespace", lambda: True)
    monkeypatch.setattr(spec_module, "SUBID_FILES", files)
    userns = {"namespaces": spec_module.DEFAULT_NAMESPACES + ("user",)}
    assert ContainerSpec(**userns).validated().user_map == (ROOT_USERNS_FIRST_ID, 65536)
    with pytest.raises(ConfigError, match="gives student"):
        ContainerSpec(**userns, user_map=(100000, 65536)).validated()
    monkeypatch.setattr(spec_module, "in_initial_user_namespace", lambda: False)   # a grading sandbox's labkit
    assert ContainerSpec(**userns).validated().user_map == (100000, 65536)


def test_rootless_userns_maps_the_users_range_and_refuses_ids_outside_it(monkeypatch, capsys):
    """Rootless, a --userns container's ids are ids of the user's own namespace (0 the user,
    1.. the range): the default map (host 100000..) does not exist there. Past the 65,536 ids
    ordinary containers use, where the range has room; else the range's first, said once."""
    from labkit.runtime.spec import UserNamespaceMap, rootless_user_map

    monkeypatch.setattr("labkit.linux.rootless._said_userns_shares", False)
    monkeypatch.setattr("labkit.linux.rootless.ids_of_the_user_namespace", lambda: 1 + 2 * 65536)
    assert rootless_user_map(UserNamespaceMap()) == (65536, 65536)
    monkeypatch.setattr("labkit.linux.rootless.ids_of_the_user_namespace", lambda: 2 * 65536)
    assert rootless_user_map(UserNamespaceMap()) == (65536, 65536)   # 131,071 ids: just enough
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("labkit.linux.rootless.ids_of_the_user_namespace", lambda: 65537)
    assert rootless_user_map(UserNamespaceMap()) == (1, 65536)
    assert rootless_user_map(UserNamespaceMap()) == (1, 65536)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "--userns shares ids" in said[0] and "has 65536 ids" in said[0]
    assert rootless_user_map(UserNamespaceMap(1000, 1000)) == (1000, 1000)
    with pytest.raises(ConfigError, match=r"ids 1 to 65536 .* e.g. \(1, 65536\)"):
        rootless_user_map(UserNamespaceMap(60000, 10000))
    monkeypatch.setattr("labkit.linux.rootless.ids_of_the_user_namespace", lambda: 1)
    with pytest.raises(ConfigError, match="/etc/subuid range, and you have none"):
        rootless_user_map(UserNamespaceMap())
