"""Dockerfile reading without root: Docker's substitution rules, .dockerignore's pattern
rules, every unsupported line listed at once, the image config's command rules."""

import os

import pytest

from labkit.errors import ImageError
from labkit.images.dockerfile_words import split_raw, split_words, substitute
from labkit.images.dockerignore import DockerIgnore, Pattern, copy_context
from labkit.images.recipe import parse_recipe
from labkit.images.store import ImageConfig

VARIABLES = {"SET": "yes", "EMPTY": "", "PATH_PART": "/srv"}


@pytest.mark.parametrize("text, expected", [
    ("$SET", "yes"), ("${SET}", "yes"), ("${SET}x", "yesx"), ("$SETx", ""), ("$UNSET", ""),
    ("${UNSET:-fallback}", "fallback"), ("${EMPTY:-fallback}", "fallback"), ("${EMPTY-fallback}", ""),
    ("${UNSET-fallback}", "fallback"), ("${SET:-fallback}", "yes"),
    ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET:+alt}", ""),
    ("\\$SET", "$SET"), ("'$SET'", "$SET"), ('"$SET"', "yes"), ('"\\$SET"', "$SET"), ("a\\ b", "a b"),
    ("${UNSET:-$PATH_PART/app}", "/srv/app"), ("$", "$"), ("$1", "$1"), ("cost: 5$", "cost: 5$"),
])
def test_substitution_follows_dockers_rules(text, expected):
    assert substitute(text, VARIABLES) == expected


def test_the_escape_directive_changes_the_escape_character():
    assert substitute("`$SET", VARIABLES, escape="`") == "$SET"
    assert substitute("C:\\dir", VARIABLES, escape="`") == "C:\\dir"


def test_a_required_variable_that_is_missing_is_an_error():
    with pytest.raises(ImageError, match="NEEDED: set it"):
        substitute("${NEEDED:?set it}", VARIABLES)


def test_words_split_outside_quotes_and_keep_quotes_until_substituted():
    assert split_words('a "b c" ${SET}', VARIABLES) == ["a", "b c", "yes"]
    assert split_raw('K="a b" L=\'c d\'') == ['K="a b"', "L='c d'"]


def test_every_unsupported_line_is_listed_at_once():
    with pytest.raises(ImageError) as caught:
        parse_recipe("FROM base\nHEALTHCHECK CMD true\nRUN --mount=type=cache,target=/x true\n"
                     "ADD https://example.org/x.tgz /x\nONBUILD RUN true\nFROBNICATE\n")
    message = str(caught.value)
    assert "5 lines labkit cannot build" in message
    for line in ("line 2: HEALTHCHECK", "line 3: RUN option(s) --mount", "line 4: ADD https://example.org/x.tgz",
                 "line 5: ONBUILD", "line 6: unknown instruction 'FROBNICATE'"):
        assert line in message


def test_stages_global_args_and_flags_are_read():
    dockerfile = parse_recipe("ARG BASE=busybox\nFROM $BASE AS build\nRUN make\n"
                              "FROM busybox\nCOPY --from=build --chown=app:app /out /app\n")
    assert [arg.value for arg in dockerfile.global_args] == [[("BASE", "busybox")]]
    assert [(stage.base, stage.name) for stage in dockerfile.stages] == [("$BASE", "build"), ("busybox", None)]
    copy = dockerfile.stages[1].steps[0]
    assert copy.flags == {"from": "build", "chown": "app:app"}
    assert copy.value["sources"] == ["/out"] and copy.value["destination"] == "/app"


def test_json_that_is_not_a_list_of_strings_is_the_shell_form_as_in_docker():
    dockerfile = parse_recipe('FROM busybox\nCMD ["echo", 1]\nENTRYPOINT ["echo", "x"]\n')
    assert dockerfile.stages[0].steps[0].value == ("shell", '["echo", 1]')
    assert dockerfile.stages[0].steps[1].value == ("exec", ["echo", "x"])


@pytest.mark.parametrize("pattern, path, matches", [
    ("*.log", "debug.log", True), ("*.log", "sub/debug.log", False), ("**/*.log", "sub/debug.log", True),
    ("secrets", "secrets/key", True), ("/docs", "docs/readme", True), ("/docs", "src/docs/inner", False),
    ("**/tmp", "deep/a/tmp/x", True), ("src/?.txt", "src/a.txt", True), ("src/?.txt", "src/ab.txt", False),
    ("[a-c].txt", "b.txt", True), ("[^a-c].txt", "d.txt", True), ("[^a-c].txt", "a.txt", False),
    ("a\\*b", "a*b", True), ("a\\*b", "axb", False), ("./x/../y", "y", True),
])
def test_dockerignore_patterns_follow_go_filepath_match(pattern, path, matches):
    assert Pattern(pattern, "test").matches(path) is matches


def test_the_last_matching_dockerignore_pattern_decides(tmp_path):
    (tmp_path / ".dockerignore").write_text("*.log\n!keep.log\nkeep.log\n!important.log\n# *.txt\n")
    ignore = DockerIgnore.read(tmp_path)
    assert ignore.excludes("debug.log") and ignore.excludes("keep.log")
    assert not ignore.excludes("important.log") and not ignore.excludes("notes.txt")


def test_an_exception_inside_an_excluded_directory_is_kept(tmp_path):
    context, copy = tmp_path / "context", tmp_path / "copy"
    (context / "logs" / "old").mkdir(parents=True)
    (context / "logs" / "keep.txt").write_text("k")
    (context / "logs" / "drop.txt").write_text("d")
    (context / "logs" / "old" / "x").write_text("x")
    (context / ".dockerignore").write_text("logs\n!logs/keep.txt\n")
    copy.mkdir()
    copy_context(context, copy, DockerIgnore.read(context))
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == [".dockerignore", "logs", "logs/keep.txt"]


def test_links_in_the_context_are_copied_as_links_never_followed(tmp_path):
    context, copy = tmp_path / "context", tmp_path / "copy"
    context.mkdir()
    copy.mkdir()
    (context / "passwd").symlink_to("/etc/passwd")
    copy_context(context, copy, DockerIgnore([]))
    assert (copy / "passwd").is_symlink() and str((copy / "passwd").readlink()) == "/etc/passwd"


@pytest.mark.parametrize("entrypoint, cmd, command, override, expected", [
    (None, ["sh"], [], None, ["sh"]),
    (["echo", "e"], ["c"], [], None, ["echo", "e", "c"]),
    (["echo", "e"], ["c"], ["given"], None, ["echo", "e", "given"]),
    (["echo", "e"], ["c"], [], "id", ["id"]),           # --entrypoint drops the image's CMD
    (["echo", "e"], ["c"], ["-u"], "id", ["id", "-u"]),
    (["echo", "e"], ["c"], ["x"], "", ["x"]),            # --entrypoint "" : no entrypoint
    (None, None, [], None, []),                          # nothing to run: the runtime says so
])
def test_the_command_a_container_runs_is_decided_as_docker_does(entrypoint, cmd, command, override, expected):
    assert ImageConfig(entrypoint=entrypoint, cmd=cmd).command(command, override) == expected


def test_stop_signal_names_and_numbers():
    import signal

    assert ImageConfig(stop_signal="SIGQUIT").stop_signal_number() == signal.SIGQUIT
    assert ImageConfig(stop_signal="usr1").stop_signal_number() == signal.SIGUSR1
    assert ImageConfig(stop_signal="9").stop_signal_number() == 9
    assert ImageConfig().stop_signal_number() == signal.SIGTERM
    with pytest.raises(ImageError, match="not a signal"):
        ImageConfig(stop_signal="SIGNOPE").stop_signal_number()


def test_a_context_that_holds_the_copy_or_the_home_leaves_them_out(tmp_path):
    context = tmp_path / "context"
    home = context / "labkit-home"
    (home / "layers").mkdir(parents=True)
    (home / "layers" / "secret").write_text("a layer's file\n")
    (context / "f").write_text("f\n")
    copy = home / "tmp" / "scratch" / "context"   # the builder copies into its home's scratch
    copy.mkdir(parents=True)
    copy_context(context, copy, DockerIgnore([]), leave_out=(home,))
    assert sorted(os.listdir(copy)) == ["f"]
    # Without leave_out the home (and the copy inside it) is walked: the copy holds its own copy.
    again = tmp_path / "plain"
    again.mkdir()
    copy_context(context, again, DockerIgnore([]))
    assert (again / "labkit-home" / "layers" / "secret").exists()
