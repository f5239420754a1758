"""Errors meant for people: what failed, why, and what to do."""


class LabkitError(Exception):
    """Base class of every error labkit raises on purpose."""


class ConfigError(LabkitError, ValueError):
    """A value given by the user (size, CPU count, option) cannot be used."""


class HostError(LabkitError):
    """The host lacks something labkit needs (root, a controller, a namespace kind)."""


class ImageError(LabkitError):
    """An image or layer is missing, corrupt or hostile."""


class BadImageInput(ImageError, ConfigError):
    """What the user gave to make an image (a recipe line, an archive member) cannot be
    used: an ImageError, and bad input as a ConfigError is (the CLI exits 125)."""


class ImageNotFound(ImageError, LookupError):
    """No image by that name."""


class ContainerError(LabkitError):
    """A container's command did not succeed.

    Carries the `Result` so callers can look at exit code, cause and output.
    """

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result

    @property
    def exit_code(self):
        return None if self.result is None else self.result.exit_code

    @property
    def cause(self):
        return None if self.result is None else self.result.cause
