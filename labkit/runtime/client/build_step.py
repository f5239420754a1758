"""What a build's RUN step needs from the runtime: run the command in a container on the
image so far and keep what it changed as a layer. The runtime offers it; front ends
hand it to labkit.images.builder.build (images never import the runtime).

Runs in the caller (a build is a client of the runtime like any other)."""

from labkit.images.commit import commit_layer
from labkit.runtime.client.container import Container
from labkit.runtime.spec import ContainerSpec


def run_build_step(image, command: list, config):
    """Run `command` on `image` (which may be an unsaved stack of layers) with the
    build's env and workdir, and store what it changed as a layer.

    Returns (Result, layer digest or None when the command failed).
    """
    container = Container(ContainerSpec(image=image, command=list(command), env=list(config.env),
                                        workdir=config.workdir or "/", user=config.user or None))
    try:
        result = container.run(remove=False)
        if result.exit_code != 0:
            return result, None
        # The container has exited and its mount namespace with it, so the upper dir is
        # no longer mounted: its files can be moved rather than copied.
        return result, commit_layer(container.upper_dir, image.store, consume=True)
    finally:
        container.remove()
