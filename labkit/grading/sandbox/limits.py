"""What one submission may use: memory, tasks, CPU and wall-clock time."""

from dataclasses import dataclass

from labkit.units import parse_bytes, parse_count, parse_cpus


@dataclass(frozen=True)
class SandboxLimits:
    memory: object = "2g"          # bytes, or Docker units ("2g")
    pids: int = 512
    cpus: float = 1.0              # a fraction of one core
    wall_seconds: float = 600.0    # the whole submission, kernel start to last cell

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory, "sandbox memory limit")

    def validated(self) -> "SandboxLimits":
        """Raise ConfigError naming the bad limit; return self when all are usable."""
        parse_bytes(self.memory, "sandbox memory limit")
        parse_count(self.pids, "sandbox pids limit")
        parse_cpus(self.cpus, "sandbox CPU limit")
        if not (isinstance(self.wall_seconds, (int, float)) and self.wall_seconds > 0):
            from labkit.errors import ConfigError

            raise ConfigError(f"sandbox wall-clock budget {self.wall_seconds!r} must be a positive number "
                              "of seconds")
        return self
