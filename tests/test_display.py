"""How a Container looks in a notebook: labkit.display's HTML, registered with IPython's
display formatter by the extension (no kernel and no root needed: an in-process shell and
a container that is configured, never started)."""


def test_the_html_repr_is_the_display_formatters_while_the_extension_is_loaded(labkit_home):
    """The notebook's HTML for a Container comes from IPython's text/html formatter, which
    the extension registers (the kernel loads it at start-up), not from a method patched
    onto the class: without the extension a Container has no HTML."""
    from IPython.core.interactiveshell import InteractiveShell

    import labkit
    from labkit.display import container_html
    from labkit.runtime import Container

    shell = InteractiveShell.instance()
    container = Container(command=["true"], name="shown")
    assert "text/html" not in shell.display_formatter.format(container)[0]
    labkit.load_ipython_extension(shell)
    try:
        shown = shell.display_formatter.format(container)[0]
    finally:
        labkit.unload_ipython_extension(shell)
    assert shown["text/html"] == container_html(container)
    assert "container shown" in shown["text/html"]
    assert "text/html" not in shell.display_formatter.format(container)[0]
    assert not hasattr(Container, "_repr_html_")
