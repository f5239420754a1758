"""Tab in the magics: candidates come from the magics' own parsers (pure logic, no root)."""

from types import SimpleNamespace

import pytest

from labkit.magics.completion import candidates, complete
from labkit.magics.container import cell_parser, line_parser
from labkit.magics.image import build_parser


def test_a_cell_option_completes_to_the_option_not_to_python_names():
    assert [c for c in candidates(cell_parser(), []) if c.startswith("--mem")] == ["--memory"]


@pytest.mark.parametrize("line, expected, absent", [
    ("%%container --mem", {"--memory"}, {"memoryview"}),
    ("%%container --image ", {"busybox", "web-app"}, {"--memory"}),
    ("%%container --net ", {"none", "host", "bridge", "container:"}, set()),
    ("%container ", {"run", "exec", "logs", "stop", "kill", "rm", "inspect", "stats"}, set()),
    ("%container stop ", {"web", "--time", "-t"}, {"busybox"}),
    ("%container kill -s ", {"TERM", "KILL"}, {"web"}),
    ("%container exec web --u", {"--user"}, set()),
    ("%container commit web ", {"web", "busybox"}, set()),
    ("%container run -d --image ", {"busybox", "web-app"}, set()),
])
def test_line_completion(line, expected, absent):
    parser = cell_parser() if line.startswith("%%") else line_parser()
    event = SimpleNamespace(text_until_cursor=line)
    found = set(complete(parser, event, containers=["web"], images=["busybox", "web-app"]))
    assert expected <= found and not (absent & found), found


def test_image_build_completes_build_arg():
    event = SimpleNamespace(text_until_cursor="%%image build app --build")
    assert "--build-arg" in complete(build_parser(), event)


def test_container_help_shows_every_option():
    from labkit.magics.container import ContainerMagics

    text = ContainerMagics.container.__doc__
    for flag in ("--memory", "--pids-limit", "--tmpfs", "--python", "--shell", "exec", "logs", "inspect"):
        assert flag in text
