"""IPython magics: `%%container` / `%container` (here) and, when that part of labkit is
installed, the image magics (`labkit.magics.image`).

    %load_ext labkit        # or use the "Python 3 (labkit)" kernel, which does this
"""

import importlib


def _magic_classes() -> list:
    from labkit.magics.container import ContainerMagics

    classes = [ContainerMagics]
    try:
        image = importlib.import_module("labkit.magics.image")
    except ModuleNotFoundError as error:
        if error.name != "labkit.magics.image":
            raise  # the module is there but something it imports is not: say so
    else:
        classes.append(image.ImageMagics)
    return classes


def register(ipython) -> None:
    from labkit.display import register_reprs
    from labkit.magics import completion

    register_reprs(ipython)
    parsers = {}
    for magic_class in _magic_classes():
        magics = magic_class(ipython)
        ipython.register_magics(magics)
        parsers.update(magics.completion_parsers())
    completion.register(ipython, parsers)   # %%container --mem<Tab>: the options, not Python names


def unregister(ipython) -> None:
    """IPython has no unregister call: drop the names our classes registered."""
    from labkit.display import unregister_reprs

    unregister_reprs(ipython)
    table = ipython.magics_manager.magics
    for magic_class in _magic_classes():
        for kind, names in magic_class.magics.items():
            for name in names:
                table[kind].pop(name, None)
