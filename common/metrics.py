"""Prometheus textfile output (node_exporter's textfile collector), written atomically."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import atomic_write
from .sandbox import lasting_output


def _label_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Family:
    name: str
    help: str
    samples: list[tuple[dict, float]] = field(default_factory=list)

    def add(self, value: float | int | bool | None, **labels) -> None:
        if value is None:
            return
        self.samples.append((labels, float(value)))


class Metrics:
    """Gauges by name; rendered in the text exposition format."""

    def __init__(self):
        self.families: dict[str, Family] = {}

    def gauge(self, name: str, help_text: str) -> Family:
        return self.families.setdefault(name, Family(name, help_text))

    def render(self) -> str:
        lines = []
        for family in self.families.values():
            if not family.samples:
                continue
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} gauge")
            for labels, value in family.samples:
                label_text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
                text = repr(value) if not math.isfinite(value) else f"{value:.15g}"
                lines.append(
                    f"{family.name}{{{label_text}}} {text}"
                    if label_text
                    else f"{family.name} {text}"
                )
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically: a collector never reads half a file."""
        lasting_output(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.render(), mode=0o644)
